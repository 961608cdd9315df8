"""Shared helpers: compose configs like the driver does, run the CLI as a user would (a real
`python -m launch` process, or the same entry in this process when only its answer matters),
and start ranks the way the integration tests do."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import fcntl
import functools
import importlib
import importlib.util
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from launch.app import compose, composed_node
from launch.conf_tree import GROUPS, conf_dir, group_choices, load_gpu_profile
from train.spec.config import GpuConfig, ModelConfig, RunConfig

REPO = Path(__file__).resolve().parent.parent
# Fast settings for the tiny model on CPU: enough steps to time, few enough to stay quick.
FAST = [
    "model=tiny",
    "wandb.mode=disabled",
    "train.steps=6",
    "train.warmup_steps=2",
    "train.seq_len=64",
    "train.micro_batch=2",
    "train.global_batch=4",
]
# Layouts against one rank, loss for loss (tests/integration/test_parallel.py, test_pipeline.py):
# the tiny model in fp32, 5 steps of global batch 8 in micro-batches of 2.
# Three steps: the first loss checks the forward, the second and third the gradients and
# two optimizer updates (AdamW's moments after one step and after two); steps beyond them
# repeat the same code. Each step of every layout's run is ~1/3 of these modules' time.
LOSS_FOR_LOSS_STEPS = 3
LOSS_FOR_LOSS = [
    "model=tiny",
    "wandb.mode=disabled",
    "sweep=none",
    "precision=fp32",
    f"train.steps={LOSS_FOR_LOSS_STEPS}",
    "train.warmup_steps=1",
    "train.seq_len=32",
    "train.micro_batch=2",
    "train.global_batch=8",
]
# conf/model/tiny.yaml as a typed config, for tests that build shapes without composing.
TINY = ModelConfig(
    name="tiny",
    n_layers=4,
    d_model=128,
    n_heads=4,
    n_kv_heads=2,
    ffn_hidden=384,
    vocab_size=2048,
    max_seq_len=256,
)
# Two 2-layer shapes for the precision rules: llama-7b's widths (WIDE) and a 2048-wide model
# (NARROW) whose Linear layers are too narrow for fp8 to pay.
WIDE = dataclasses.replace(
    TINY, name="wide", n_layers=2, d_model=4096, n_heads=32, n_kv_heads=8, ffn_hidden=11008,
    vocab_size=32000, max_seq_len=2048,
)  # fmt: skip
NARROW = dataclasses.replace(
    TINY, name="narrow", n_layers=2, d_model=2048, n_heads=16, n_kv_heads=16, ffn_hidden=5632,
    vocab_size=50304, max_seq_len=2048,
)  # fmt: skip
# CUDA compute capabilities: Hopper has fp8 tensor cores, Ampere does not.
HOPPER, AMPERE = (9, 0), (8, 0)
GPU_PROFILES = [g for g in group_choices("gpu") if g != "auto"]  # conf/gpu, bar `auto`


def model_config(**changes) -> ModelConfig:
    """TINY with some fields changed: a test's own shape, naming only what differs."""
    return dataclasses.replace(TINY, **changes)


def compose_run_config(overrides: list[str]) -> RunConfig:
    """The typed config `python -m launch` would get for these overrides (gpu=auto -> cpu);
    a bad value raises the ConfigError the driver prints.

    Hydra's compose takes 0.3 s on a 2-core host, and the unit tests compose some 200
    override lists: here Hydra composes each set of group choices (gpu=..., model=...) once,
    and the value overrides (train.seq_len=...) are applied to a copy as Hydra applies them
    (OmegaConf.update with merge, values parsed by Hydra's override parser): 20 ms. Anything
    else (+key, ~key, hydra.*, a value the schema refuses) goes through the driver's own
    compose, whose error is the one the driver prints; test_fast_compose_is_the_drivers
    holds the two equal."""
    try:
        typed = _fast_compose(overrides)
    except Exception:  # noqa: BLE001 - the driver's compose says what is wrong, as it would
        typed = compose(overrides)
    if typed.gpu.name == "auto":
        typed.gpu = load_gpu_profile("cpu")
    return typed


FLAT_GROUPS = {"gpu": GpuConfig, "model": ModelConfig}


def _fast_compose(overrides: list[str]) -> RunConfig:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    if any(
        o.is_add() or o.is_delete() or o.is_force_add() or o.is_sweep_override() for o in parsed
    ):
        raise ValueError("not a plain override list")
    # gpu and model files are flat (no defaults list, no interpolation): Hydra merges the
    # chosen one onto the schema's node, which is what is done here, so that the other
    # groups' choices alone key the cached composition.
    flat = {o.key_or_group: o.value() for o in parsed if o.key_or_group in FLAT_GROUPS}
    # A group named twice takes its last choice, as Hydra does; sorted, lists that differ only
    # in order share one composition.
    chosen = {o.key_or_group: o.input_line for o in parsed if o.key_or_group in GROUPS}
    groups = sorted(line for group, line in chosen.items() if group not in FLAT_GROUPS)
    values = [o for o in parsed if o.key_or_group not in GROUPS]
    if any(o.key_or_group.startswith("hydra") for o in values):
        raise ValueError("hydra's own keys")
    cfg = copy.deepcopy(_composed_groups(tuple(groups)))
    for group, choice in flat.items():
        node = OmegaConf.load(conf_dir() / group / f"{choice}.yaml")
        cfg[group] = OmegaConf.merge(OmegaConf.structured(FLAT_GROUPS[group]), node)
    for override in values:
        OmegaConf.update(cfg, override.key_or_group, override.value(), merge=True)
    return OmegaConf.to_object(cfg)


@functools.cache
def _composed_groups(groups: tuple[str, ...]):
    """The driver's composition (launch.app.composed_node) for these group choices."""
    return composed_node(list(groups))


def cli_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0"}


def free_port() -> int:
    """A TCP port nothing listens on now (the OS's pick), for a rendezvous a test starts."""
    with socket.socket() as probe:
        probe.bind(("", 0))  # every interface: free for a store on any of them
        return probe.getsockname()[1]


def run_command(
    argv: list[str], cwd: Path = REPO, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """A child process with cli_env() (plus `env`), its output captured as text."""
    return subprocess.run(
        argv,
        cwd=cwd,
        env={**cli_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_module(
    module: str, args: list[str], cwd: Path = REPO, timeout: float = 300
) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` with this interpreter (sys.executable)."""
    return run_command([sys.executable, "-m", module, *args], cwd, timeout)


def run_launch(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m launch ARGS` as a process, as a user runs it."""
    return run_module("launch", args, cwd, timeout)


@pytest.fixture
def launch_cli(tmp_path):
    """`python -m launch` as a process in tmp_path (marker `cli`): for what only a process
    shows (its exit status and every byte on stderr) and for runs that start ranks."""

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return run_launch(list(args), tmp_path, timeout)

    return run


@dataclasses.dataclass
class CliResult:
    """What a test reads of a finished `python -m launch`: the fields of CompletedProcess."""

    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def module_in_process(tmp_path, monkeypatch, capfd):
    """An entry module's `main` (launch.__main__, launch.comm, launch.project) called in this
    process with tmp_path as the working directory: the same exit code, stdout and stderr for
    a refused input or a dry run, without starting Python and importing torch again (~2.5 s a
    call). Hydra's global state and the logging it configures are put back after each call.
    Runs that start ranks go through `launch_cli`; test_cli_entry.py holds the process path to
    the same answers."""

    def run(module: str, *args: str) -> CliResult:
        entry = importlib.import_module(module)
        capfd.readouterr()  # only this call's output
        with monkeypatch.context() as call, restored_hydra_and_logging():
            call.chdir(tmp_path)
            call.setattr(sys, "argv", [entry.__file__, *args])
            for key, value in cli_env().items():
                if os.environ.get(key) != value:
                    call.setenv(key, value)
            try:
                entry.main()
                code = 0
            except SystemExit as exc:
                code = exit_status(exc)
        out, err = capfd.readouterr()
        return CliResult(code, out, err)

    return run


@pytest.fixture
def launch_in_process(module_in_process):
    """`python -m launch` (launch/__main__.py: Hydra, the checks, a dry run) in this process."""
    return functools.partial(module_in_process, "launch.__main__")


def exit_status(exc: SystemExit) -> int:
    """The status the interpreter would exit with (sys.exit(None) -> 0, a message -> 1)."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)  # what the interpreter prints for sys.exit("...")
    return 1


class restored_hydra_and_logging:
    """Hydra keeps its state in singletons (hydra/extra/pytest_plugin.py restores them the
    same way; its plugin registry is kept, not rediscovered) and configures the root logger
    for the job; the driver may set environment variables for the processes it starts: all
    are as before when the block ends."""

    def __enter__(self):
        from hydra.core.plugins import Plugins
        from hydra.core.singleton import Singleton

        self.plugins = Singleton._instances.get(Plugins)
        self.state = Singleton.get_state()
        root = logging.getLogger()
        self.logging = (root.handlers[:], root.level)
        self.environ = dict(os.environ)
        return self

    def __exit__(self, *exc_info):
        from hydra.core.plugins import Plugins
        from hydra.core.singleton import Singleton
        from omegaconf.basecontainer import BaseContainer

        Singleton._instances = self.state["instances"]
        if self.plugins is not None:
            Singleton._instances[Plugins] = self.plugins
        BaseContainer._resolvers = self.state["omegaconf_resolvers"]
        root = logging.getLogger()
        root.handlers[:], level = self.logging
        root.setLevel(level)
        os.environ.clear()
        os.environ.update(self.environ)
        return False


def losses(run_dir: Path) -> list[float]:
    """Every step's loss of a run, from its metrics.jsonl."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


def validated(overrides: list[str]) -> RunConfig:
    """compose_run_config, then the driver's checks (launch/validate.py) on every planned run:
    a refused input raises its ConfigError."""
    from launch.plan import plan_runs
    from launch.validate import validate

    cfg = compose_run_config(overrides)
    validate(cfg, plan_runs(cfg))
    return cfg


def rank_config(run_dir: Path, overrides: list[str]) -> tuple[RunConfig, Path]:
    """Compose, plan and write RUN_DIR/config.yaml as the driver does for its first run: the
    composed config and the path a rank reads (`python -m train --config PATH`)."""
    from launch.pipeline import write_run_config
    from launch.plan import plan_runs

    cfg = compose_run_config([*overrides, f"run_dir={run_dir}"])
    return cfg, write_run_config(cfg, plan_runs(cfg)[0], "test")


def saved_config(root: Path, name: str, overrides: list[str]) -> tuple[RunConfig, Path]:
    """The composed config of a 2-rank run named ``name`` saved as root/name/config.yaml (no
    sweep plan): what a test's own rank program reads."""
    cfg = compose_run_config(
        [*overrides, "wandb.mode=disabled", "sweep=none", "cluster.nproc_per_node=2"]
        + [f"run_dir={root / name}"]
    )
    (root / name).mkdir(parents=True)
    path = root / name / "config.yaml"
    OmegaConf.save(OmegaConf.structured(cfg), path)
    return cfg, path


def run_one_rank_here(config_path: Path) -> None:
    """The worker's run in this process, as one rank without a process group (the
    reference the multi-rank layouts are compared with)."""
    from train.runtime.worker import run

    distributed = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    saved = {k: os.environ.pop(k) for k in distributed if k in os.environ}
    try:
        run(config_path)
    finally:
        os.environ.update(saved)


def torchrun(
    nproc: int, module: str, *args: str, timeout: float = 600
) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node N -m MODULE ARGS` from the repo (a rank helper
    under tests/ranks); fails the test with the tail of its output, else returns it."""
    standalone = ["--standalone", "--nproc-per-node", str(nproc)]
    result = run_module("torch.distributed.run", [*standalone, "-m", module, *args], REPO, timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def launch_process(args: list[str], cwd: Path, *, merge_stderr: bool = True) -> subprocess.Popen:
    """`python -m launch ARGS` started in the background, for a test that acts on the run
    while it goes (kills a rank, sends SIGTERM); stderr joins stdout unless merge_stderr is
    false."""
    return subprocess.Popen(
        [sys.executable, "-m", "launch", *args],
        cwd=cwd,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
        text=True,
    )


@contextlib.contextmanager
def running_driver(args: list[str], cwd: Path, *, merge_stderr: bool = True):
    """launch_process as a block: the driver is killed when the block ends, however it ends
    (a failed wait or assertion must not leave it running)."""
    driver = launch_process(args, cwd, merge_stderr=merge_stderr)
    try:
        yield driver
    finally:
        driver.kill()


def finish(driver: subprocess.Popen, timeout: float = 240) -> str:
    """Wait for a background driver (stderr joined to stdout); it must exit 0. Its output."""
    output, _ = driver.communicate(timeout=timeout)
    assert driver.returncode == 0, output[-3000:]
    return output


@pytest.fixture
def fake_transformer_engine(monkeypatch):
    """An empty `transformer_engine.pytorch` in sys.modules (Transformer Engine needs CUDA):
    the test puts on it what the code under test calls."""
    te = types.ModuleType("transformer_engine.pytorch")
    package = types.ModuleType("transformer_engine")
    package.pytorch = te
    monkeypatch.setitem(sys.modules, "transformer_engine", package)
    monkeypatch.setitem(sys.modules, "transformer_engine.pytorch", te)
    return te


PREBUILT_EXTENSIONS = "SCALEPROBE_TEST_TORCH_EXTENSIONS_DIR"
CACHE_VARIABLES = {
    "XDG_CACHE_HOME": "xdg",
    "TORCH_EXTENSIONS_DIR": "torch_extensions",
    "TORCHINDUCTOR_CACHE_DIR": "torchinductor",
    "MPLCONFIGDIR": "matplotlib",
    "WANDB_CACHE_DIR": "wandb/cache",
    "WANDB_CONFIG_DIR": "wandb/config",
    "WANDB_DATA_DIR": "wandb/data",
    # torchrun's --log-dir (its PET_ variable), for a torchrun started without one (the
    # driver gives its own, in the run dir): torchrun would leave a torchelastic_* folder in
    # the system's temporary folder.
    "PET_LOG_DIR": "torchelastic",
}


# The lock file that keeps an `exclusive` test alone on the cores (pytest_runtest_protocol):
# made by the first process of the run (xdist's controller), inherited by its workers.
CORES_LOCK = "SCALEPROBE_TEST_CORES_LOCK"


def pytest_configure(config):
    """One temporary cache for the whole run (and every process it starts): the user's
    own scaleprobe cache in their home (a measured matmul ceiling, say) must not change what
    tests see."""
    if CORES_LOCK not in os.environ:
        handle, path = tempfile.mkstemp(prefix="scaleprobe-test-cores-", suffix=".lock")
        os.close(handle)
        os.environ[CORES_LOCK] = config.scaleprobe_cores_lock = path
    config.scaleprobe_cache = tempfile.mkdtemp(prefix="scaleprobe-test-cache-")
    os.environ["SCALEPROBE_CACHE_DIR"] = config.scaleprobe_cache
    os.environ["WANDB_MODE"] = "disabled"
    # Nor may the libraries the ranks load write into the user's caches: DeepSpeed's JIT-built
    # CPU op (torch_extensions), inductor's compiled kernels, matplotlib's font list, wandb's
    # debug logs and settings. Each gets a folder of this run's cache, built once per run.
    # (Not WANDB_DIR: it would win over the run dir a test expects wandb's files in.)
    for variable, folder in CACHE_VARIABLES.items():
        os.environ[variable] = os.path.join(config.scaleprobe_cache, folder)
    # Except where the caller named a build folder for DeepSpeed's op (.ci/run builds it there
    # once, before the suite, as an install step: ~35 s of compiling on 2 cores).
    if PREBUILT_EXTENSIONS in os.environ:
        os.environ["TORCH_EXTENSIONS_DIR"] = os.environ[PREBUILT_EXTENSIONS]


def home_cache_state() -> dict[str, int]:
    """The user's cache folders two levels deep, with their modification times."""
    root = Path.home() / ".cache"
    if not root.is_dir():
        return {}
    entries = [*root.iterdir(), *(c for d in root.iterdir() if d.is_dir() for c in d.iterdir())]
    return {str(e): e.stat().st_mtime_ns for e in entries if e.exists()}


def pytest_sessionstart(session):
    session.config.home_cache_before = home_cache_state()


def pytest_sessionfinish(session, exitstatus):
    """Fail the run if a test (or a process it started) wrote into the user's ~/.cache."""
    before = getattr(session.config, "home_cache_before", None)
    if before is None or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    after = home_cache_state()
    touched = sorted(k for k in after if before.get(k) != after[k])
    if touched:
        print(f"\nerror: the tests wrote into the user's cache: {', '.join(touched)}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_unconfigure(config):
    shutil.rmtree(getattr(config, "scaleprobe_cache", ""), ignore_errors=True)
    with contextlib.suppress(OSError):  # only the process that made it has the attribute
        os.remove(getattr(config, "scaleprobe_cores_lock", ""))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Under xdist (`-n 2`: two tests at once on two cores) a test marked `exclusive` times
    something against a prediction or a link rate, and the other worker's ranks would skew
    it: each test holds the run's lock shared, an exclusive one holds it alone, from its
    fixtures' setup to their teardown. In one process the lock is never contended."""
    with open(os.environ[CORES_LOCK], "rb") as lock:
        alone = item.get_closest_marker("exclusive") is not None
        fcntl.flock(lock, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def pytest_collection_modifyitems(config, items):
    """Markers from where a test lives and what it uses (tests/README.md)."""
    for item in items:
        if "integration" in Path(str(item.fspath)).parts:
            item.add_marker(pytest.mark.integration)
        if "launch_cli" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cli)


def published_points():
    """bench/published_points.py as a module (a script, not a package)."""
    spec = importlib.util.spec_from_file_location("published", REPO / "bench/published_points.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("published", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return sys.modules["published"]
