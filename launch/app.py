"""The one Hydra entry every driver command uses (`launch`, `launch.comm`, `launch.project`).

Each command hands `run_app` a function of the typed config. Before Hydra starts, group
choices and keys are checked so that an unknown name, a misspelt key or a wrong type is one
line on stderr and exit code 2; after, every LaunchError is printed here and only here, as
one line with its exit code. SIGTERM and SIGHUP (a scheduler's preemption, `timeout`, a
dropped ssh session) unwind like Ctrl-C, so every process the driver started is stopped.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable

from rich.console import Console

from launch.conf_tree import GROUPS, conf_dir, group_choices, register_schema
from launch.errors import ConfigError, LaunchError
from train.config import RunConfig

# The node the driver fills (train/config.py ResolvedConfig): never an option.
DRIVER_FILLED = "resolved"
Command = Callable[[RunConfig, list[str], Console], int]


class Stopped(BaseException):
    """A signal asked the driver to stop; raised where it was, so cleanup runs on the way out."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum, frame):
    raise Stopped(signum)


def precheck(argv: list[str]) -> None:
    """Reject unknown group choices and keys/types Hydra would refuse, as a ConfigError."""
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = get_args_parser().parse_args(argv).overrides
    parsed = OverridesParser.create().parse_overrides(overrides)
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
        if key in GROUPS:
            allowed = group_choices(key)
            for value in values:
                if value not in allowed:
                    raise ConfigError(
                        key, f"unknown {key} {value!r}; choose from: " + ", ".join(allowed)
                    )
        prefix = "+" if override.is_add() else "~" if override.is_delete() else ""
        single_values.append(f"{prefix}{key}={values[0]}" if values else f"{prefix}{key}")
    compose(single_values)


def compose(overrides: list[str]) -> RunConfig:
    """The typed config for these overrides, Hydra's and OmegaConf's errors as one line."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    register_schema()
    try:
        with initialize_config_dir(str(conf_dir()), version_base=None):
            cfg = hydra_compose("config", overrides=overrides)
            if OmegaConf.is_interpolation(cfg, "run_dir"):
                # ${hydra:runtime.output_dir} exists only inside a Hydra job; checked there.
                cfg.run_dir = "."
            return OmegaConf.to_object(cfg)  # enum values and nested types surface here
    except OmegaConfBaseException as exc:
        raise ConfigError(_full_key(exc) or "config", _first_line(exc)) from None
    except HydraException as exc:
        # Hydra wraps OmegaConf's error, which knows the full key and the expected type.
        cause = exc.__cause__
        if isinstance(cause, OmegaConfBaseException) and _full_key(cause):
            raise ConfigError(_full_key(cause), _first_line(cause)) from None
        raise ConfigError("override", " ".join(str(exc).split())) from None


def _full_key(exc: Exception) -> str | None:
    return getattr(exc, "full_key", None)


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0]


def fail(exc: LaunchError) -> None:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(exc.exit_code)


def run_app(command: Command) -> None:
    """Check the command line, compose the config with Hydra, run `command` on it."""
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig, OmegaConf

    register_schema()
    try:
        precheck(sys.argv[1:])
    except LaunchError as exc:
        fail(exc)

    @hydra.main(config_path=str(conf_dir()), config_name="config", version_base=None)
    def hydra_main(dict_cfg: DictConfig) -> None:
        previous = {s: signal.signal(s, _raise_stopped) for s in (signal.SIGTERM, signal.SIGHUP)}
        try:
            cfg = OmegaConf.to_object(dict_cfg)
            code = command(cfg, list(HydraConfig.get().overrides.task), Console())
        except LaunchError as exc:
            fail(exc)
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
        if code:
            sys.exit(code)

    hydra_main()
