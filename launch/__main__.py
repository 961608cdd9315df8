"""``python -m launch [overrides]``: compose the config with Hydra, then run or sweep.

Group names and the composed config are checked before Hydra starts the job, so an unknown
name, a misspelt key or a wrong type is one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys

import hydra
from hydra._internal.utils import get_args_parser
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from launch.conf_tree import GROUPS, conf_dir, group_choices, register_schema
from launch.errors import EXIT_CONFIG_ERROR, ConfigError
from launch.runner import RunFailed


def precheck(argv: list[str]) -> None:
    """Reject unknown group choices and keys/types Hydra would refuse, as a ConfigError."""
    overrides = get_args_parser().parse_args(argv).overrides
    parsed = OverridesParser.create().parse_overrides(overrides)
    single_values = []
    for override in parsed:
        key = override.key_or_group
        if key.startswith("hydra"):
            continue
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
        prefix = {"add": "+", "del": "~"}.get(
            "add" if override.is_add() else "del" if override.is_delete() else "", ""
        )
        single_values.append(f"{prefix}{key}={values[0]}" if values else f"{prefix}{key}")
    compose_check(single_values)


def compose_check(overrides: list[str]) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(str(conf_dir()), version_base=None):
            cfg = compose("config", overrides=overrides)
            OmegaConf.to_container(cfg.model)  # touch a group: type errors surface here
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "config"
        raise ConfigError(key, str(exc).splitlines()[0]) from None
    except HydraException as exc:
        # Hydra wraps OmegaConf's error, which knows the full key and the expected type.
        cause = exc.__cause__
        if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
            raise ConfigError(cause.full_key, str(cause).splitlines()[0]) from None
        raise ConfigError("override", " ".join(str(exc).split())) from None


@hydra.main(config_path=str(conf_dir()), config_name="config", version_base=None)
def hydra_main(dict_cfg: DictConfig) -> None:
    from launch.driver import drive

    console = Console(stderr=False)
    try:
        cfg = OmegaConf.to_object(dict_cfg)
        code = drive(cfg, list(HydraConfig.get().overrides.task), console)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_CONFIG_ERROR)
    except RunFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    if code:
        sys.exit(code)


def main() -> None:
    register_schema()
    try:
        precheck(sys.argv[1:])
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_CONFIG_ERROR)
    hydra_main()


if __name__ == "__main__":
    main()
