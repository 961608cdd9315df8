"""The one Hydra entry every driver command uses (`launch`, `launch.comm`, `launch.project`).

Each command hands `run_app` a function of the typed config. Before Hydra starts, group
choices and keys are checked so that an unknown name, a misspelt key, a wrong type, an
override Hydra cannot parse or two of Hydra's modes at once is one line on stderr and exit
code 2; a multirun has every job checked (the command's `check`) before the first starts.
--help is the command's own page (launch/command_help.py). After, every LaunchError (and a full
disk) is printed here and only here, as one line with its exit code. SIGTERM and SIGHUP (a
scheduler's preemption, `timeout`, a dropped ssh session) unwind like Ctrl-C, so every process
the driver started is stopped. A key under an open map of the schema (fabric.nccl_env.X) may be
set without Hydra's `+`/`++`, as README's examples do: `++` is added for it.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console

from launch.command_help import asks_for_help, print_help
from launch.conf_tree import (
    GROUPS,
    conf_dir,
    group_choices,
    override_keys,
    primary_config,
    register_schema,
)
from launch.errors import USER_ERRORS, ConfigError, DiskFull, LaunchError, Stopped
from launch.terminal import plain_console
from train.files.safe_files import is_disk_full, unwritable_reason
from train.spec.config import RunConfig

# The node the driver fills (train/spec/config.py ResolvedConfig): never an option.
DRIVER_FILLED = "resolved"
Command = Callable[[RunConfig, list[str], Console], int]
# Everything a command checks before it writes or starts anything; ConfigError when refused.
Check = Callable[[RunConfig, list[str], Console], object]
# Hydra launchers whose jobs run on this machine, so this machine can check them up front.
JOBS_HERE = ("basic", "submitit_local")


def _raise_stopped(signum, frame):
    raise Stopped(signum)


def precheck(argv: list[str], check: Check | None = None) -> list[str]:
    """Reject unknown group choices and keys/types Hydra would refuse, as a ConfigError; in a
    multirun, every job's config through ``check``. Returns the overrides it composed (a
    sweep's first value for each swept key)."""
    from hydra._internal.utils import get_args_parser

    args = get_args_parser().parse_args(argv)
    refuse_mixed_modes(args)
    parsed = parse_overrides(args.overrides)
    if not (args.help or args.cfg or args.info or args.hydra_help or args.shell_completion):
        refuse_an_output_dir_hydra_cannot_make(parsed, multirun=args.multirun)  # a job's
    if args.multirun:
        refuse_shared_run_dir(parsed)
    single_values = []
    for override in parsed:
        key = override.key_or_group
        if key.startswith("hydra"):
            continue
        if key.split(".")[0] == DRIVER_FILLED:
            raise ConfigError(key, "is filled in by the driver for each run; it is not an option")
        values = (
            list(override.sweep_string_iterator())
            if override.is_sweep_override()
            else [override.get_value_element_as_str()]
        )
        group, _, leaf = key.partition(".")
        if group in GROUPS and leaf == "name":
            # The group's choice names its node: gpu.name=h100_sxm kept the auto profile's
            # empty peaks under a new name (a traceback), model.name=llama_7b relabelled tiny.
            named = values and not override.is_delete()
            choice = f"{group}={values[0] if named else 'NAME'}"
            raise ConfigError(key, f"is the {group} choice's own name; choose it with {choice}")
        if key in GROUPS:
            allowed = group_choices(key)
            for value in values:
                if value not in allowed:
                    raise ConfigError(
                        key, f"unknown {key} {value!r}; choose from: " + ", ".join(allowed)
                    )
        prefix = _prefix(override)
        single_values.append(f"{prefix}{key}={values[0]}" if values else f"{prefix}{key}")
    additions = [o for o in parsed if o.is_add()]
    if additions:
        # `+key` adds only to the schema's open maps: checked against the config without them.
        cfg = compose([o for o in single_values if not o.startswith("+")])
        for override in additions:
            refuse_unknown_addition(override.key_or_group, cfg)
    compose(single_values)
    if args.multirun and check is not None:
        check_every_job(parsed, check)
    return single_values


def refuse_mixed_modes(args) -> None:
    """What Hydra refuses with a ValueError traceback: two of its modes at once, or --resolve
    without --cfg (or --help)."""
    modes = {
        "--run": args.run,
        "--multirun": args.multirun,
        "--cfg": args.cfg is not None,
        "--info": args.info is not None,
        "--shell-completion": args.shell_completion,
    }
    given = [flag for flag, on in modes.items() if on]
    if len(given) > 1:
        raise ConfigError(
            given[0], f"one of {', '.join(modes)} at a time, not {' and '.join(given)}"
        )
    if args.resolve and args.cfg is None and not args.help:
        raise ConfigError(
            "--resolve", "goes with --cfg job|hydra|all: it resolves what that prints"
        )


def refuse_an_output_dir_hydra_cannot_make(parsed: list, *, multirun: bool) -> None:
    """hydra.run.dir (hydra.sweep.dir for a multirun), given or conf/config.yaml's, under a file
    or in a folder that cannot be written: Hydra's mkdir traceback once it starts. Checked up
    to its first interpolation (runs/${now:...}: runs)."""
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    # value(), not the element as written: '' is the empty string, ${now:..} not escaped.
    given = [str(o.value()) for o in parsed if o.key_or_group == key and not o.is_sweep_override()]
    value = given[-1] if given else _hydra_default(key)
    if not value.strip():  # Hydra wrote into the working directory
        raise ConfigError(key, "is empty; give a directory (or leave it unset)")
    fixed, interpolated, _ = value.partition("${")
    # runs/${now:...}: the folder runs; out-${now:...}: the folder the name is made in.
    path = Path(fixed) if not interpolated or fixed.endswith("/") else Path(fixed).parent
    unwritable = unwritable_reason(path)
    if unwritable:
        raise ConfigError(key, f"{value}: {unwritable}" if path != Path(value) else unwritable)


def _hydra_default(key: str) -> str:
    node = primary_config()
    for part in key.split("."):
        node = node[part]
    return node


def with_run_dir_for_cfg(argv: list[str]) -> list[str]:
    """``--cfg job --resolve``: Hydra makes no output dir to print a config, so run_dir's default
    (${hydra:runtime.output_dir}) resolved to None, a traceback. It shows the dir a run would
    be given, hydra.run.dir, instead; inserted beside the other overrides (Hydra's parser takes
    them as one group)."""
    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_args(argv)
    if not (args.cfg and args.resolve) or "run_dir" in override_keys(args.overrides):
        return argv
    at = argv.index(args.overrides[0]) + len(args.overrides) if args.overrides else len(argv)
    return [*argv[:at], "run_dir=${hydra:run.dir}", *argv[at:]]


def _prefix(override) -> str:
    return (
        "++"
        if override.is_force_add()
        else "+"
        if override.is_add()
        else "~"
        if override.is_delete()
        else ""
    )


def parse_overrides(overrides: list[str]) -> list:
    """Hydra's parse of the overrides; one it cannot parse is a ConfigError naming it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        return OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as exc:
        key = exc.override.split("=", 1)[0].lstrip("+~") or "override"
        raise ConfigError(
            key,
            f"Hydra cannot parse the override {exc.override!r} ({exc.message.splitlines()[0]}): "
            "( ) [ ] { } , = $ and spaces are its syntax; quote the value inside the override, "
            f"e.g. \"{key}='...'\"",
        ) from None


def with_open_map_keys_added(argv: list[str]) -> list[str]:
    """``++`` before an override of an open map of the schema or a key under one
    (fabric.nccl_env.X, project.price_per_gpu_hour={h100_sxm:2}): Hydra wants ``+`` to add a
    key and refuses it for one that exists, and refuses a whole map into the config's struct
    (``Key 'h100_sxm' is not in struct``); ``++`` does both, and a user writes neither."""
    out = []
    for arg in argv:
        key, equals, _ = arg.partition("=")
        bare = key[1:] if key.startswith("+") and not key.startswith("++") else key
        parent_path = bare.rpartition(".")[0]
        is_override = equals and not bare.startswith(("-", "+", "~"))
        open_map = is_open_map(bare) or (parent_path and is_open_map(parent_path))
        out.append(f"++{bare}={arg.partition('=')[2]}" if is_override and open_map else arg)
    return out


def schema_default(key: str) -> object:
    """The schema's default at a dotted key (a dataclass, a dict, a list, a value), or None
    where the schema has no such key (a group choice's own key, hydra.*, a typo)."""
    node: object = _schema()
    for part in filter(None, key.split(".")):
        node = node.get(part) if isinstance(node, dict) else getattr(node, part, None)
    return node


@functools.cache
def _schema() -> RunConfig:
    return RunConfig()  # read only: the defaults, built once


def is_open_map(key: str) -> bool:
    """Whether the schema's node at ``key`` is a map of names the user chooses."""
    return bool(key) and isinstance(schema_default(key), dict)


def expected_form(key: str, overrides: list[str]) -> str:
    """How to write ``key``'s value where OmegaConf's own words (``str is not a ListConfig``,
    ``Cannot assign int to Dict``) do not say: the list form, or the open map's forms."""
    # The last override of the key is the one Hydra applied.
    values = [o.partition("=")[2] for o in overrides if o.partition("=")[0].lstrip("+~") == key]
    given = values[-1] if values else ""
    default = schema_default(key)
    if isinstance(default, list) and not given.startswith("["):
        return f"; write the list form {key}=[{given or '...'}]"
    if isinstance(default, dict):
        return f"; it is a map: {key}.NAME=VALUE, or {key}={{NAME:VALUE}}"
    return ""


def _refused(key: str, exc: Exception, overrides: list[str]) -> ConfigError:
    """OmegaConf's first line for ``key``, with the expected form where it lacks one."""
    form = expected_form(key, overrides)
    return ConfigError(key, _first_line(exc).rstrip(".") + form if form else _first_line(exc))


def check_every_job(parsed, check: Check) -> None:
    """A multirun's jobs, each composed and checked before the first starts: a refused value
    in job 3 must not come after jobs 0-2 have run. Nothing is written (run_dir: a path that
    does not exist; each job's own dir is made by Hydra when it starts). Jobs a launcher runs
    on other nodes (submitit_slurm) are not checked here: gpu=auto would see this one."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.errors import HydraException

    launcher = next((o for o in parsed if o.key_or_group == "hydra/launcher"), None)
    if launcher is not None and launcher.value() not in JOBS_HERE:
        return  # the jobs run on other nodes (submitit_slurm): each checks itself there
    ours = [o for o in parsed if not o.key_or_group.startswith("hydra")]
    try:
        jobs = BasicSweeper.split_arguments(ours, None)[0]
    except HydraException:
        return  # a sweep type the basic sweeper lacks: Hydra says so itself
    placeholder = Path(tempfile.gettempdir()) / "scaleprobe-multirun-check-unwritten"
    swept = {o.get_key_element() for o in ours if o.is_sweep_override()}
    for number, overrides in enumerate(jobs):
        cfg = compose(overrides)
        cfg.run_dir = str(placeholder)
        try:
            check(cfg, overrides, plain_console(quiet=True))
        except ConfigError as exc:
            values = " ".join(o for o in overrides if o.split("=", 1)[0] in swept)
            raise ConfigError(exc.key, f"{exc.message} (multirun job {number}: {values})") from None


def refuse_shared_run_dir(parsed) -> None:
    """A multirun whose jobs would all write one fixed run_dir (or launch.project's
    project.out, each job's projection.* over the last's): refused before job 0 runs."""
    for override in parsed:
        key = override.key_or_group
        if key not in ("run_dir", "project.out") or override.is_sweep_override():
            continue
        value = override.get_value_element_as_str()
        if "${" not in value:
            raise ConfigError(
                key,
                f"{value}: every job of a multirun would write there; leave {key} unset "
                "(one dir per job under hydra.sweep.dir) or use ${hydra:runtime.output_dir}",
            )


def refuse_unknown_addition(key: str, cfg: RunConfig) -> None:
    """`+key=value` adds keys only to the open maps of the schema (fabric.nccl_env, ...): a
    `+train.stpes=5` would otherwise be ignored without a word."""
    parent_path, _, name = key.rpartition(".")
    parent = cfg
    for part in filter(None, parent_path.split(".")):
        parent = parent.get(part) if isinstance(parent, dict) else getattr(parent, part, None)
    if isinstance(parent, dict):
        return  # an open map: any key may be added
    if dataclasses.is_dataclass(parent):
        known = [f.name for f in dataclasses.fields(parent)]
        if name in known:
            # Hydra's `+` adds a key; this one exists, so it is set without it.
            raise ConfigError(key, f"is a key of the config already: set it without +, {key}=...")
        close = difflib.get_close_matches(name, known, n=1)
        hint = (
            f"; did you mean {parent_path + '.' if parent_path else ''}{close[0]}?" if close else ""
        )
        raise ConfigError(key, f"is not a key of the config{hint}")
    raise ConfigError(key, "cannot be added here: its parent is not a map of the config")


def composed_node(overrides: list[str]):
    """Hydra's composition of conf/ with these overrides, as a DictConfig (not yet typed)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_schema()
    with initialize_config_dir(str(conf_dir()), version_base=None):
        cfg = hydra_compose("config", overrides=overrides)
    if OmegaConf.is_interpolation(cfg, "run_dir") and "${hydra:" in str(cfg._get_node("run_dir")):
        # ${hydra:runtime.output_dir} exists only inside a Hydra job; checked there. Any other
        # interpolation (${oops}, ${env:HOME}) is resolved, and refused, here.
        cfg.run_dir = "."
    return cfg


def compose(overrides: list[str]) -> RunConfig:
    """The typed config for these overrides, Hydra's and OmegaConf's errors as one line."""
    from hydra.errors import HydraException

    try:
        # to_object: enum values and nested types surface here
        return OmegaConf.to_object(composed_node(overrides))
    except OmegaConfBaseException as exc:
        raise _refused(_full_key(exc) or "config", exc, overrides) from None
    except HydraException as exc:
        # Hydra wraps OmegaConf's error, which knows the full key and the expected type.
        cause = exc.__cause__
        if isinstance(cause, OmegaConfBaseException) and _full_key(cause):
            raise _refused(_full_key(cause), cause, overrides) from None
        raise ConfigError("override", " ".join(str(exc).split())) from None


def _full_key(exc: Exception) -> str | None:
    return getattr(exc, "full_key", None)


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0]


def existing_part_of_run_dir(argv: list[str]) -> Path | None:
    """Before Hydra makes its output dir: the deepest dir of an explicit ``hydra.run.dir`` that
    exists already (the dir itself when it does). It and what is above it are the user's, never
    removed; what is below it Hydra makes for this call. None for a multirun (one dir per job
    under hydra.sweep.dir) or a dir named by an interpolation (``${now:...}``, known only once
    Hydra resolves it)."""
    from hydra._internal.utils import get_args_parser

    args = get_args_parser().parse_args(argv)
    if args.multirun:
        return None
    values = [
        str(o.value())
        for o in parse_overrides(args.overrides)
        if o.key_or_group == "hydra.run.dir" and not o.is_sweep_override()
    ]
    if not values or "${" in values[-1]:
        return None
    path = Path(values[-1]).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path.resolve()


def remove_if_empty(output_dir: Path, existed: Path | None = None) -> None:
    """Hydra makes its output dir before the job runs: when nothing went there (an explicit
    run_dir, a refused input) leave no empty dir behind, nor its empty parents, that this call
    made. ``existed`` (existing_part_of_run_dir) is where that stops: the user's dir and its
    parents are kept, wherever they are. Without it (a timestamped runs/DATE/TIME), only dirs
    below the current directory are removed, never the current directory itself."""
    path = output_dir.resolve()
    stop = Path.cwd().resolve()
    if existed is not None and (path == existed or existed in path.parents):
        stop = existed
    while path != stop and stop in path.parents:
        try:
            path.rmdir()  # only ever removes an empty directory
        except OSError:
            return
        path = path.parent


def fail(exc: LaunchError | ConfigError) -> None:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(exc.exit_code)


def run_app(
    command: Command, check: Check | None = None, help_text: Callable[[], str] | None = None
) -> None:
    """Check the command line, compose the config with Hydra, run `command` on it;
    ``help_text`` makes the command's --help page (help_page)."""
    import hydra
    from hydra.core.hydra_config import HydraConfig

    register_schema()
    sys.argv[1:] = with_run_dir_for_cfg(with_open_map_keys_added(sys.argv[1:]))
    try:
        if help_text is not None and asks_for_help(sys.argv[1:]):
            print_help(precheck(sys.argv[1:]), help_text)  # a bad override: refused as in a run
            sys.exit(0)
        precheck(sys.argv[1:], check)
    except USER_ERRORS as exc:
        fail(exc)

    # Recorded before Hydra makes its output dir: an empty dir left by a refused call is removed
    # only where this call made it.
    existed = existing_part_of_run_dir(sys.argv[1:])

    @hydra.main(config_path=str(conf_dir()), config_name="config", version_base=None)
    def hydra_main(dict_cfg: DictConfig) -> None:
        previous = {s: signal.signal(s, _raise_stopped) for s in (signal.SIGTERM, signal.SIGHUP)}
        try:
            cfg = OmegaConf.to_object(dict_cfg)
            code = command(cfg, list(HydraConfig.get().overrides.task), plain_console())
        except USER_ERRORS as exc:
            fail(exc)
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            fail(DiskFull(exc.filename or dict_cfg.get("run_dir", "?")))  # a write not ours
        except (KeyboardInterrupt, Stopped) as exc:
            name = exc.args[0] if isinstance(exc, Stopped) else "SIGINT"
            signum = exc.signum if isinstance(exc, Stopped) else signal.SIGINT
            print(
                f"stopped by {name}: every process this driver started was stopped", file=sys.stderr
            )
            sys.exit(128 + int(signum))
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            remove_if_empty(Path(HydraConfig.get().runtime.output_dir), existed)
        if code:
            sys.exit(code)

    hydra_main()
