"""What the driver shows of a failed run (launch/launchers/local.py failing_rank_lines): the
rank's own traceback, which passes through torchelastic's @record wrapper (python -m train
runs under it), and not torchrun's ChildFailedError footer. The log below is the shape of a
real torchrun --nproc-per-node 2 log of a rank that failed (torch 2.13), paths shortened."""

from __future__ import annotations

from launch.launchers.local import failing_rank_lines

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
    shown = failing_rank_lines(log).splitlines()
    assert shown[-1].endswith("No such file or directory: '/runs/x/config.yaml'"), shown
    assert not any("ChildFailedError" in line for line in shown)


def test_only_the_launchers_traceback_falls_back_to_the_logs_last_lines(tmp_path):
    log = tmp_path / "launch.log"
    log.write_text("\n".join(["step 1/6", *TORCHRUN_FOOTER]) + "\n")
    assert failing_rank_lines(log).splitlines()[-1] == "train FAILED"
