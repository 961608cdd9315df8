"""The one Hydra entry (launch/app.py) as a user meets it: typos and impossible multiruns are
one line and exit 2, and a refused or dry call leaves no empty runs/DATE/TIME behind.

The tests here with `launch_cli` start `python -m launch` processes: they hold the process
path (its exit status, every byte on stderr, nothing written) that the other unit tests reach
in-process through `launch_in_process` (tests/conftest.py), and show the two answer alike."""

from __future__ import annotations

import re

import pytest


def test_a_mistyped_added_key_is_refused_with_a_suggestion(launch_cli, tmp_path):
    result = launch_cli("+train.stpes=5", f"run_dir={tmp_path / 'r'}")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: train.stpes: is not a key of the config; did you mean train.steps?"
    )
    assert not (tmp_path / "r").exists()


def test_a_multirun_into_one_fixed_dir_is_refused_before_job_0(launch_cli, tmp_path):
    result = launch_cli("-m", "model=tiny,gpt_125m", f"run_dir={tmp_path / 'r'}")
    assert result.returncode == 2 and result.stderr.startswith("error: run_dir: ")
    assert not (tmp_path / "r").exists() and not (tmp_path / "runs").exists()


def test_driver_filled_keys_are_not_options(launch_cli, tmp_path):
    result = launch_cli("resolved.sweep_id=x", f"run_dir={tmp_path / 'r'}")
    assert (
        result.returncode == 2 and "resolved.sweep_id: is filled in by the driver" in result.stderr
    )


def test_no_empty_run_dirs_are_left_behind(launch_in_process, tmp_path):
    assert launch_in_process("train.steps=0").returncode == 2  # the default, timestamped dir
    dry = launch_in_process("sweep=none", "dry_run=true", f"run_dir={tmp_path / 'd'}")
    assert dry.returncode == 0
    assert launch_in_process("run_dir=").returncode == 2
    assert not (tmp_path / "runs").exists()
    assert (tmp_path / "d" / "config.yaml").is_file()


def test_a_refused_call_removes_the_dirs_it_made_outside_the_cwd(
    launch_in_process, tmp_path_factory
):
    """hydra.run.dir outside the working directory (`hydra.run.dir=/tmp/x/bad3` run from
    elsewhere): the dirs Hydra made for a refused call go, up to the first that existed."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    result = launch_in_process("train.steps=0", f"hydra.run.dir={elsewhere / 'x' / 'bad3'}")
    assert result.returncode == 2 and result.stderr.startswith("error: train.steps"), result
    assert elsewhere.is_dir() and not (elsewhere / "x").exists()


def test_a_refused_call_never_removes_a_dir_that_existed_before_it(
    launch_in_process, tmp_path, tmp_path_factory
):
    """The user's own empty dir is kept, outside the working directory or inside it (where
    every empty dir below the working directory used to be removed)."""
    for mine in (tmp_path_factory.mktemp("users") / "mine", tmp_path / "mine"):
        mine.mkdir()
        assert launch_in_process("train.steps=0", f"hydra.run.dir={mine}").returncode == 2
        assert mine.is_dir()


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        (["model.n_kv_heads=3"], "error: model.n_kv_heads: n_heads 4 is not divisible by"),
        # torchao's import (torch's warning about an Enum) came first: decided by the shapes,
        # before any library is imported.
        (["precision=fp8", "gpu=h100_sxm", "sweep=none"], "error: precision.fp8.min_dim: no"),
    ],
    ids=["shape", "fp8"],
)
def test_a_refusal_after_composition_is_the_same_in_the_process_and_in_process(
    launch_cli, launch_in_process, tmp_path, overrides, line
):
    """A rule checked once Hydra has composed (launch/validate.py, inside the Hydra job): the
    process exits 2 with one line on stderr and writes nothing, and the in-process entry the
    unit tests use gives the same code, stdout and stderr."""
    args = (*overrides, f"run_dir={tmp_path / 'run'}")
    process = launch_cli(*args)
    assert process.returncode == 2, process.stderr
    assert len(process.stderr.splitlines()) == 1, process.stderr
    assert process.stderr.startswith(line), process.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()
    here = launch_in_process(*args)
    assert (here.returncode, here.stdout, here.stderr) == (2, process.stdout, process.stderr)


def test_each_command_has_its_own_help(module_in_process):
    """launch.project and launch.comm were Hydra's generic text and the whole config, the same
    as python -m launch: each now says what it does, its keys with what they take, examples."""
    project = module_in_process("launch.project", "--help")
    comm = module_in_process("launch.comm", "--help")
    launch = module_in_process("launch.__main__", "--help")
    assert project.returncode == comm.returncode == launch.returncode == 0
    for key in ("project.mode=runs|comm", "project.gpus=", "h100_sxm", "project.nodes=",
                "project.calibrate_comm=", "project.out=", "projection.json", "comm.min_bytes",
                "python -m launch.project project.mode=comm"):  # fmt: skip
        assert key in project.stdout, key
    for key in ("comm.ops=", "all_reduce, all_gather", "comm.min_bytes=1024", "comm.max_bytes=",
                "comm.seconds_per_size=", "cluster=emulated|local", "busbw",
                "python -m launch.comm cluster.nproc_per_node=2"):  # fmt: skip
        assert key in comm.stdout, key
    assert "== Config ==" not in project.stdout + comm.stdout  # no whole-config dump
    # python -m launch was Hydra's "app is powered by Hydra." over the whole config: it says
    # what it does and its main keys with their defaults from conf/config.yaml, then keeps the
    # groups and the whole config to override.
    said = " ".join(launch.stdout.split())  # the descriptions are wrapped
    for key in ("runs the reference transformer", "python -m launch.project", "gpu=NAME",
                "h800", "parallel=NAME", "the performance model's choice", "(default auto)",
                "sweep.world_sizes=", "(default weak)", "cluster.nproc_per_node=N",
                "(default torchrun)", "train.global_batch=8", "dry_run=true", "resume=true",
                "python -m launch --multirun"):  # fmt: skip
        assert key in said, key
    assert "powered by Hydra" not in launch.stdout
    assert "== Config ==" in launch.stdout and "train:" in launch.stdout
    assert len({project.stdout, comm.stdout, launch.stdout}) == 3
    pages = (project.stdout, comm.stdout, launch.stdout)
    ours = [out.split("== Config groups")[0] for out in pages]
    assert max(len(line) for line in "".join(ours).splitlines()) <= 100  # Hydra's lines are its own


def test_help_after_overrides_shows_their_config_and_refuses_a_bad_one(module_in_process, tmp_path):
    """An override written before --help (`python -m launch model=llama_7b --help`) was refused
    by Hydra's argument parser ("unrecognized arguments: hydra/help=...") once the command's
    own help page was appended to the command line; it now shows the config it composes, and
    a bad override is one line and exit 2, as in a run. Nothing is written."""
    shown = module_in_process("launch.__main__", "model=llama_7b", "--help")
    assert shown.returncode == 0, shown.stderr
    assert "\n  name: llama_7b\n" in shown.stdout and "== Main keys ==" in shown.stdout
    assert shown.stdout.count("== Config ==") == 1
    project = module_in_process("launch.project", "gpu=h800", "-h")
    assert project.returncode == 0 and "python -m launch.project" in project.stdout
    for bad, refusal in (("model=nope", "error: model: unknown model 'nope'"),
                         ("train.nope=1", "error: train.nope: ")):  # fmt: skip
        refused = module_in_process("launch.comm", bad, "--help")
        assert refused.returncode == 2 and refused.stderr.startswith(refusal), refused
        assert len(refused.stderr.splitlines()) == 1 and refused.stdout == ""
    assert list(tmp_path.iterdir()) == []  # the calls' working directory


def test_hydra_s_own_flags_print_or_refuse_in_one_line(launch_in_process, tmp_path):
    """`--cfg job --resolve` was an InterpolationValidationError traceback (Hydra makes no
    output dir to print a config, so run_dir's ${hydra:runtime.output_dir} was None): it shows
    the dir a run would get. Two of Hydra's modes at once, or --resolve alone, were ValueError
    tracebacks: one line, exit 2. Nothing is written."""
    for args in (["--cfg", "job", "--resolve"], ["model=llama_7b", "--cfg", "job", "--resolve"]):
        shown = launch_in_process(*args)
        assert shown.returncode == 0, shown.stderr
        assert re.search(r"^run_dir: runs/\d{4}-\d\d-\d\d/", shown.stdout, re.M), shown.stdout
    assert "  name: llama_7b" in shown.stdout  # the override before the flags still applies
    refusals = {
        ("-m", "model=tiny,gpt_125m", "--cfg", "job"): "error: --multirun: one of --run, ",
        ("--resolve",): "error: --resolve: goes with --cfg",
    }
    for args, refusal in refusals.items():
        refused = launch_in_process(*args)
        assert refused.returncode == 2 and refused.stderr.startswith(refusal), refused
        assert len(refused.stderr.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_an_output_dir_under_a_file_is_one_line_before_anything_is_written(
    module_in_process, tmp_path
):
    """run_dir, hydra.run.dir, hydra.sweep.dir (or the default runs/ of the working directory)
    where a file is, or below one: each was a NotADirectoryError traceback, from the driver's
    mkdir or Hydra's, after gpu=auto and the layouts had been resolved."""
    taken = tmp_path / "taken"
    taken.write_text("mine\n")
    refusals = {
        ("launch.__main__", f"run_dir={taken}/x"): f"run_dir: {taken}/x: {taken} is not a",
        ("launch.comm", f"run_dir={taken}/x"): f"run_dir: {taken}/x: {taken} is not a",
        ("launch.__main__", f"hydra.run.dir={taken}"): f"hydra.run.dir: {taken} is not a",
        ("launch.__main__", "-m", "model=tiny,gpt_125m", f"hydra.sweep.dir={taken}/s"): (
            f"hydra.sweep.dir: {taken}/s: {taken} is not a"
        ),
    }
    for args, refusal in refusals.items():
        refused = module_in_process(*args)
        assert refused.returncode == 2 and refused.stderr == f"error: {refusal} directory\n"
        assert refused.stdout == ""
    (tmp_path / "runs").write_text("mine\n")  # the default runs/DATE/TIME of the cwd
    refused = module_in_process("launch.__main__")
    assert refused.returncode == 2
    assert refused.stderr == (
        "error: hydra.run.dir: runs/${now:%Y-%m-%d}/${now:%H-%M-%S-%f}: runs is not a directory\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs", "taken"]
    assert taken.read_text() == (tmp_path / "runs").read_text() == "mine\n"


def test_the_comm_benchmark_ignores_the_model_it_never_builds(module_in_process, tmp_path):
    """launch.comm with a command line shared with a training run (model=llama_7b) was refused
    for the model's memory on this host; its ranks build no model. A cluster rule still holds."""
    run_dir = tmp_path / "comm"
    common = ["gpu=cpu", "model=llama_7b", "dry_run=true", f"run_dir={run_dir}"]
    comm = module_in_process("launch.comm", *common, "cluster.nproc_per_node=2")
    assert comm.returncode == 0, comm.stderr
    assert "train.bench.comm_rank" in comm.stdout and "GB per rank" not in comm.stdout
    refused = module_in_process("launch.comm", *common, "cluster.nproc_per_node=0")
    assert refused.returncode == 2 and refused.stderr.startswith("error: cluster.nproc_per_node")


def test_a_group_s_own_name_or_an_empty_hydra_dir_is_one_line(module_in_process, tmp_path):
    """gpu.name=h100_sxm kept the auto profile's empty peaks under a new name (a ValueError
    traceback); model.name=llama_7b ran tiny labelled llama_7b. hydra.sweep.dir='' wrote the
    jobs' dirs into the working directory."""
    refusals = {
        ("launch.__main__", "gpu.name=h100_sxm"): "gpu.name: is the gpu choice's own name; "
        "choose it with gpu=h100_sxm",
        ("launch.project", "model.name=llama_7b"): "model.name: is the model choice's own name; "
        "choose it with model=llama_7b",
        ("launch.__main__", "-m", "hydra.sweep.dir=''", "model=tiny,gpt_125m"): (
            "hydra.sweep.dir: is empty; give a directory (or leave it unset)"
        ),
        ("launch.__main__", "hydra.run.dir="): "hydra.run.dir: is empty; give a directory",
    }
    for args, refusal in refusals.items():
        refused = module_in_process(*args)
        assert refused.returncode == 2 and refused.stderr.startswith(f"error: {refusal}"), refused
        assert len(refused.stderr.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_a_run_dir_interpolation_that_does_not_resolve_is_one_line(launch_in_process, tmp_path):
    """run_dir=${env:...}/runs (Hydra 1.0's resolver, gone since) was an
    UnsupportedInterpolationType traceback once the job started: run_dir was the one key not
    resolved up front. (A resolver no version has stands in for env: never the user's home.)"""
    for value, says in (("${nosuch:X}/runs", "Unsupported interpolation type nosuch"),
                        ("${oops}", "Interpolation key 'oops' not found")):  # fmt: skip
        refused = launch_in_process(f"run_dir={value}", "dry_run=true")
        assert refused.returncode == 2 and refused.stderr == f"error: run_dir: {says}\n", refused
    assert list(tmp_path.iterdir()) == []


def test_the_comm_benchmark_says_what_it_times_and_no_training_lines(module_in_process, tmp_path):
    """launch.comm printed `layout: auto -> ddp`, `precision: auto -> bf16` and a dry run's
    `global batch`, none of which a collective benchmark has (launch/pipeline.py Job.trains);
    it says its ops, sizes and points instead. python -m launch keeps its lines."""
    comm = module_in_process(
        "launch.comm", "gpu=cpu", "cluster.nproc_per_node=2", "comm.ops=[all_reduce,broadcast]",
        "comm.max_bytes=4096", "dry_run=true", f"run_dir={tmp_path / 'comm'}",
    )  # fmt: skip
    assert comm.returncode == 0, comm.stderr
    said = " ".join(comm.stdout.split())
    assert "timing all_reduce, broadcast at 3 sizes (1 KiB to 4 KiB, doubling)" in said
    assert "in intra-node groups, 1 node(s) x 2 ranks: 6 points" in said
    for training_only in ("layout:", "precision:", "global batch", "peak:"):
        assert training_only not in comm.stdout, training_only
    train = module_in_process(
        "launch.__main__", "gpu=cpu", "sweep=none", "cluster.nproc_per_node=1", "dry_run=true",
        f"run_dir={tmp_path / 'train'}",
    )  # fmt: skip
    assert train.returncode == 0, train.stderr
    assert "layout: auto ->" in train.stdout and "precision: auto ->" in train.stdout
    assert "global batch" in train.stdout and "timing" not in train.stdout
