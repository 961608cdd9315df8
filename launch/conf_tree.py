"""Where the Hydra config tree lives, what each group offers, the schema registration, and
which keys a command line's overrides set."""

from __future__ import annotations

import copy
import importlib.resources
from collections.abc import Iterable
from functools import cache
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from train.spec.config import GpuConfig, RunConfig

GROUPS = ("gpu", "model", "precision", "parallel", "cluster", "launcher", "fabric", "sweep")


@cache
def conf_dir() -> Path:
    """The repository's conf/ in a checkout or editable install; the packaged copy otherwise."""
    in_checkout = Path(__file__).resolve().parent.parent / "conf"
    if (in_checkout / "config.yaml").is_file():
        return in_checkout
    return Path(str(importlib.resources.files("launch") / "conf"))


def register_schema() -> None:
    """The typed schema as Hydra's `base_config`, stored once: every compose needs it, and
    storing it again costs a quarter of a compose (asked of the store, not remembered here:
    whoever resets Hydra's global state also drops it)."""
    store = ConfigStore.instance()
    if "base_config.yaml" not in store.repo:
        store.store(name="base_config", node=RunConfig)


def group_choices(group: str) -> list[str]:
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


@cache
def primary_config() -> dict:
    """conf/config.yaml as written: its defaults list and hydra node, ${now:...} unresolved."""
    return OmegaConf.to_container(OmegaConf.load(conf_dir() / "config.yaml"))


def default_choices() -> dict[str, str]:
    """The option conf/config.yaml's defaults list gives each group (gpu: auto, ...)."""
    listed = primary_config()["defaults"]
    pairs = (dict(entry).popitem() for entry in listed if not isinstance(entry, str))
    return {group: choice for group, choice in pairs if group in GROUPS}


def load_gpu_profile(name: str) -> GpuConfig:
    """conf/gpu/NAME.yaml as the typed GpuConfig; each caller gets its own copy."""
    path = conf_dir() / "gpu" / f"{name}.yaml"
    return copy.deepcopy(_typed_gpu_profile(path, path.stat().st_mtime_ns))


@cache
def _typed_gpu_profile(path: Path, mtime_ns: int) -> GpuConfig:
    # OmegaConf's structured merge takes ~20-40 ms on a 2-core host; a projection over every
    # part, parallel=auto's candidates and the tests load the same profiles again and again.
    node = OmegaConf.load(path)
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(GpuConfig), node))


def override_keys(overrides: Iterable[str]) -> set[str]:
    """The keys a command line's overrides set (``+key=v``, ``++key=v``, ``~key`` included)."""
    return {o.split("=", 1)[0].lstrip("+~") for o in overrides}
