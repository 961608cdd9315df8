"""wandb's environment variables, as wandb users expect them: the command line, then the
environment, then scaleprobe's default.

`wandb.mode` defaults to offline in conf/: a choice of this tool, not of the user. Someone who
exports WANDB_MODE=disabled (or WANDB_PROJECT, WANDB_ENTITY) expects it to hold for every
wandb run their jobs make, as it does for any `wandb.init` that does not pass the argument;
an explicit `wandb.mode=...` on the command line is a choice for this run and wins, as
`wandb.init(mode=...)` wins over WANDB_MODE in wandb itself. The driver resolves them here,
before config.yaml is written, so every rank on every node runs (and the config records) the
same mode. The variables wandb reads for arguments scaleprobe otherwise fills (WANDB_DIR,
WANDB_NAME, WANDB_RUN_GROUP, WANDB_JOB_TYPE, WANDB_SILENT) win on the ranks
(train/measure/tracking.py); the rest (WANDB_API_KEY, WANDB_TAGS, WANDB_BASE_URL, ...) wandb
reads itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from launch.conf_tree import override_keys
from train.spec.config import RunConfig, WandbMode
from train.spec.config_error import ConfigError

# wandb's older spellings (wandb/sdk/wandb_settings.py: `dryrun` is offline, `run` online).
MODE_ALIASES = {"dryrun": "offline", "run": "online"}
TRUE = ("1", "true", "yes")


def apply_wandb_env(
    cfg: RunConfig, overrides: list[str], environ: Mapping[str, str] = os.environ
) -> None:
    """Set cfg.wandb's mode, project and entity from WANDB_MODE (or the legacy
    WANDB_DISABLED=true), WANDB_PROJECT and WANDB_ENTITY where the command line did not."""
    given = override_keys(overrides)
    mode = environ.get("WANDB_MODE", "").strip().lower()
    if "wandb.mode" not in given:
        if mode:
            cfg.wandb.mode = _mode(mode)
        elif environ.get("WANDB_DISABLED", "").strip().lower() in TRUE:
            cfg.wandb.mode = WandbMode.disabled
    for key in ("project", "entity"):
        value = environ.get(f"WANDB_{key.upper()}", "").strip()
        if value and f"wandb.{key}" not in given:
            setattr(cfg.wandb, key, value)


def _mode(value: str) -> WandbMode:
    choices = [m.value for m in WandbMode]
    mode = MODE_ALIASES.get(value, value)
    if mode not in choices:
        raise ConfigError(
            "WANDB_MODE",
            f"{value!r} (from the environment): scaleprobe runs wandb {', '.join(choices)} "
            "(or wandb's dryrun, run); unset it or set wandb.mode on the command line",
        )
    return WandbMode(mode)
