"""A driver command's --help: what it does, its main keys with what each takes, examples, the
config groups and (python -m launch) the whole config its overrides compose."""

from __future__ import annotations

import string
import textwrap
from collections.abc import Callable

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import OmegaConf

from launch.conf_tree import GROUPS, conf_dir, group_choices


def help_page(
    summary: str, keys: list[tuple[str, str]], examples: list[str], *, whole_config: bool = False
) -> str:
    """A command's --help page (print_help fills it): what it does, its main keys with what
    each takes, examples, then the config groups, and with ``whole_config`` every key with its
    default. A string.Template, whose ``$`` the text escapes."""
    width = max(len(key) for key, _ in keys) + 2
    lines = [textwrap.fill(summary, 98), "", "== Main keys =="]
    for key, what in keys:
        # The description column wrapped to fit 100 columns beside the widest key.
        folded = textwrap.wrap(what, max(40, 98 - width)) or [""]
        lines += [f"  {key:<{width}}{folded[0]}", *(f"  {'':<{width}}{f}" for f in folded[1:])]
    lines += ["", "== Examples ==", *(f"  {e}" for e in examples), ""]
    text = "\n".join(lines).replace("$", "$$")
    groups = "== Config groups (group=option) ==\n$APP_CONFIG_GROUPS\n"
    if whole_config:
        groups += "\n== Config ==\nAny key is an override (KEY=VALUE); each with its default:\n"
        groups += "\n$CONFIG\n"
    return f"{text}\n{groups}"


def asks_for_help(argv: list[str]) -> bool:
    return bool({"--help", "-h"} & set(argv))


def print_help(overrides: list[str], page: Callable[[], str]) -> None:
    """--help: the command's page (help_page) over the config these (checked) overrides
    compose. Not Hydra's --help, which lists each group's options through a copy of its whole
    config repository per option: ~4 s on a 2-core host."""
    with initialize_config_dir(str(conf_dir()), version_base=None):
        cfg = hydra_compose("config", overrides=overrides)
    groups = "\n".join(f"{g}: {', '.join(group_choices(g))}" for g in sorted(GROUPS))
    text = string.Template(page()).substitute(
        APP_CONFIG_GROUPS=groups, CONFIG=OmegaConf.to_yaml(cfg)
    )
    print(text)
