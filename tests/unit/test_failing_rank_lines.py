"""What the driver shows of a failed run (launch/launchers/local.py rank_failure): the
rank's own traceback, which passes through torchelastic's @record wrapper (python -m train
runs under it), and not torchrun's ChildFailedError footer. The log below is the shape of a
real torchrun --nproc-per-node 2 log of a rank that failed (torch 2.13), paths shortened."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from launch.errors import RunFailed
from launch.launchers.command import NodeCommand
from launch.launchers.local import Outcome, rank_failure, result_of
from launch.rundir import record_failure

SITE = "/usr/lib/python3.11/site-packages"
RECORD = f'  File "{SITE}/torch/distributed/elastic/multiprocessing/errors/__init__.py", line 367, in wrapper'  # noqa: E501
RANK_TRACEBACK = [
    "[rank0]: Traceback (most recent call last):",
    '[rank0]:   File "<frozen runpy>", line 198, in _run_module_as_main',
    '[rank0]:   File "/src/train/__main__.py", line 26, in <module>',
    "[rank0]:     main()",
    f"[rank0]: {RECORD}",
    "[rank0]:     return f(*args, **kwargs)",
    '[rank0]:   File "/src/train/runtime/worker.py", line 25, in run',
    "[rank0]:     cfg = load_run_config(config_path)",
    "[rank0]: FileNotFoundError: [Errno 2] No such file or directory: '/runs/x/config.yaml'",
]
TORCHRUN_FOOTER = [
    "Traceback (most recent call last):",
    '  File "/usr/bin/torchrun", line 8, in <module>',
    "    sys.exit(main())",
    RECORD,
    "    return f(*args, **kwargs)",
    f'  File "{SITE}/torch/distributed/run.py", line 1028, in main',
    "    run(args)",
    f'  File "{SITE}/torch/distributed/launcher/api.py", line 383, in launch_agent',
    "    raise ChildFailedError(",
    "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ",
    "============================================================",
    "train FAILED",
]


def test_the_ranks_own_traceback_is_shown_not_torchruns_footer(tmp_path):
    log = tmp_path / "launch.log"
    log.write_text("\n".join(["step 1/6", *RANK_TRACEBACK, *TORCHRUN_FOOTER]) + "\n")
    shown = rank_failure(log).lines.splitlines()
    assert shown[-1].endswith("No such file or directory: '/runs/x/config.yaml'"), shown
    assert not any("ChildFailedError" in line for line in shown)


def test_only_the_launchers_traceback_falls_back_to_the_logs_last_lines(tmp_path):
    log = tmp_path / "launch.log"
    log.write_text("\n".join(["step 1/6", *TORCHRUN_FOOTER]) + "\n")
    assert rank_failure(log).lines.splitlines()[-1] == "train FAILED"


# The reviewer's OOM case, from a real run (`python -m launch train.steps=30
# 'sweep.world_sizes=[2]'`, then kill -9 of local rank 1; torch 2.13, paths shortened): rank 0
# raised gloo's error first, yet torchrun's Root Cause block says rank 1 died by SIGKILL.
GLOO_TRACEBACK = [
    "[rank0]: Traceback (most recent call last):",
    '[rank0]:   File "/src/train/runtime/worker.py", line 88, in step',
    "[rank0]:     loss.backward()",
    "[rank0]: RuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection "
    "closed by peer [127.0.0.1]:29500 (the remote worker crashing)",
]
KILLED_FOOTER = [
    "W1201 05:03:26.112000 10109 site-packages/torch/distributed/elastic/multiprocessing/api.py:"
    "1028] Sending process 10155 closing signal SIGTERM",
    "E1201 05:03:26.145000 10109 site-packages/torch/distributed/elastic/multiprocessing/api.py:"
    "1002] failed (exitcode: -9) local_rank: 1 (pid: 10156) of binary: /usr/bin/python",
    *TORCHRUN_FOOTER[:-2],
    "=======================================================",
    "train FAILED",
    "-------------------------------------------------------",
    "Failures:",
    "[1]:",
    "  time      : 2026-12-01_05:03:26",
    "  host      : localhost",
    "  rank      : 0 (local_rank: 0)",
    "  exitcode  : -15 (pid: 10155)  (SIGTERM)",
    "  error_file: <N/A>",
    "  traceback : Signal 15 (SIGTERM) received by PID 10155",
    "-------------------------------------------------------",
    "Root Cause (first observed failure):",
    "[0]:",
    "  time      : 2026-12-01_05:03:26",
    "  host      : localhost",
    "  rank      : 1 (local_rank: 1)",
    "  exitcode  : -9 (pid: 10156)  (SIGKILL)",
    "  error_file: <N/A>",
    "  traceback : Signal 9 (SIGKILL) received by PID 10156",
    "=======================================================",
]


def raised_footer(error_file: str) -> list[str]:
    """torchrun's footer when rank 1 raised (a real torchrun --nproc-per-node 2 run of a
    script raising in rank 1 under @record): the traceback field is its error.json's stack,
    indented by two spaces."""
    return [
        *TORCHRUN_FOOTER[:-2],
        "============================================================",
        "train FAILED",
        "------------------------------------------------------------",
        "Failures:",
        "[1]:",
        "  time      : 2026-12-01_05:05:33",
        "  host      : localhost",
        "  rank      : 0 (local_rank: 0)",
        "  exitcode  : -15 (pid: 15732)  (SIGTERM)",
        "  error_file: <N/A>",
        "  traceback : Signal 15 (SIGTERM) received by PID 15732",
        "------------------------------------------------------------",
        "Root Cause (first observed failure):",
        "[0]:",
        "  time      : 2026-12-01_05:05:33",
        "  host      : localhost",
        "  rank      : 1 (local_rank: 1)",
        "  exitcode  : 1 (pid: 15733) ",
        f"  error_file: {error_file}",
        "  traceback : Traceback (most recent call last):",
        f"  {RECORD}",
        "        return f(*args, **kwargs)",
        '    File "/src/train/runtime/worker.py", line 25, in run',
        '      raise ValueError("boom in rank 1")',
        "  ValueError: boom in rank 1",
        "  ",
        "============================================================",
    ]


def test_a_rank_killed_by_a_signal_is_blamed_not_the_peer_that_raised_after_it(tmp_path):
    log = tmp_path / "launch.log"
    log.write_text("\n".join(["step 3/30", *GLOO_TRACEBACK, *KILLED_FOOTER]) + "\n")
    failure = rank_failure(log)
    assert failure.lines.strip() == (
        "rank 1 was killed by SIGKILL (signal 9): out of memory (check dmesg) or killed "
        "from outside"
    )
    assert (failure.rank, failure.rank_exit_code, failure.signal) == (1, -9, "SIGKILL")
    assert "gloo" not in rank_failure(log).lines


def test_the_root_cause_ranks_own_traceback_is_shown_not_the_first_one(tmp_path):
    log = tmp_path / "launch.log"
    rank1 = [line.replace("[rank0]", "[rank1]") for line in RANK_TRACEBACK]
    rank1[-1] = "[rank1]: ValueError: boom in rank 1"
    log.write_text("\n".join([*GLOO_TRACEBACK, *rank1, *raised_footer("<N/A>")]) + "\n")
    failure = rank_failure(log)
    assert failure.lines.splitlines()[-1] == "[rank1]: ValueError: boom in rank 1"
    assert (failure.rank, failure.rank_exit_code, failure.signal) == (1, 1, None)
    # cluster.max_restarts: an earlier attempt's traceback of the same rank stays in the log;
    # the one shown is the last attempt's, which torchrun's verdict is about.
    earlier = [*rank1[:-1], "[rank1]: OSError: an earlier attempt"]
    log.write_text("\n".join([*earlier, *GLOO_TRACEBACK, *rank1, *raised_footer("<N/A>")]) + "\n")
    assert rank_failure(log).lines.splitlines()[-1] == "[rank1]: ValueError: boom in rank 1"


def test_a_root_cause_without_its_traceback_in_the_log_reads_its_error_json(tmp_path):
    """The rank's stderr did not reach this log (another node's file): the error.json its
    @record wrapper wrote under the run's torchelastic/ folder, found by local rank."""
    error_json = tmp_path / "torchelastic" / "abc_x" / "attempt_0" / "1" / "error.json"
    error_json.parent.mkdir(parents=True)
    stack = "Traceback (most recent call last):\n  File \"w.py\", line 3\nKeyError: 'from json'\n"
    error_json.write_text(
        json.dumps({"message": {"message": "KeyError", "extraInfo": {"py_callstack": stack}}})
    )
    log = tmp_path / "launch.log"
    # Named where torchrun saw it (another node's path): not here, so searched for.
    log.write_text("\n".join([*GLOO_TRACEBACK, *raised_footer("/elsewhere/error.json")]) + "\n")
    assert rank_failure(log).lines.splitlines()[-1] == "KeyError: 'from json'"
    error_json.unlink()  # no error.json either: the block's own traceback field
    assert rank_failure(log).lines.splitlines()[-1] == "ValueError: boom in rank 1"


def test_deepspeeds_launcher_says_a_rank_was_killed_without_naming_it(tmp_path):
    """The shape of a real launcher=deepspeed run whose rank 1 was SIGKILLed (DeepSpeed 0.19:
    rank 0's gloo traceback, then the launcher's line, which names no rank)."""
    log = tmp_path / "launch.log"
    exit_line = (
        "[2026-12-01 05:03:26,145] [ERROR] [launch.py:259:sigkill_handler] ['/usr/bin/python', "
        "'-u', '-m', 'train', '--config', '/runs/ws2/config.yaml'] exits with return code = {}"
    )
    log.write_text("\n".join([*GLOO_TRACEBACK, exit_line.format(-9)]) + "\n")
    failure = rank_failure(log)
    assert failure.lines.startswith("a rank was killed by SIGKILL (signal 9)")
    assert (failure.rank, failure.signal) == (None, "SIGKILL")
    # A rank that raised: its traceback, as before.
    log.write_text("\n".join([*RANK_TRACEBACK, exit_line.format(1)]) + "\n")
    assert rank_failure(log).lines.splitlines()[-1] == RANK_TRACEBACK[-1]


def test_failed_json_records_the_rank_and_the_signal(tmp_path):
    log = tmp_path / "launch.log"
    log.write_text("\n".join([*GLOO_TRACEBACK, *KILLED_FOOTER]) + "\n")
    plan = SimpleNamespace(name="ws2", world_size=2, run_dir=tmp_path)
    node = NodeCommand(0, ["torchrun", "--nproc-per-node", "2"], {})
    with pytest.raises(RunFailed) as raised:
        result_of(plan, Outcome(failed=(node, 1)), "summary.json", True)
    assert "rank 1 was killed by SIGKILL" in str(raised.value)
    record = json.loads(record_failure(plan, raised.value).read_text())
    assert record["exit_code"] == 1
    assert (record["rank"], record["rank_exit_code"], record["signal"]) == (1, -9, "SIGKILL")
    assert record["last_lines"][-1].startswith("rank 1 was killed by SIGKILL (signal 9)")
