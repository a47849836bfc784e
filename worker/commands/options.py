"""Command-line flags generated from :class:`worker.settings.Settings`.

Every setting gets ``--<name>`` with its environment variable and default in the
help text, so ``--help``, the environment and the README table say the same thing.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError

from worker.settings import Settings


def env_name(field: str) -> str:
    return f"FLORIST_{field.upper()}"


def add_settings_flags(
    parser: argparse.ArgumentParser, fields: Iterable[str] | None = None
) -> None:
    """Add a flag per setting (or per name in ``fields``); unset flags leave env/defaults."""
    group = parser.add_argument_group("settings (flags override FLORIST_* environment variables)")
    for name, info in Settings.model_fields.items():
        if fields is not None and name not in fields:
            continue
        default = "<hostname>-<pid>" if info.default_factory else info.default
        group.add_argument(
            f"--{name.replace('_', '-')}",
            dest=f"setting_{name}",
            default=None,
            metavar=name.split("_")[-1].upper(),
            help=f"{info.description} [env {env_name(name)}; default {default}]",
        )


def settings_from(arguments: argparse.Namespace, **overrides: Any) -> Settings:
    """Settings from the environment, overridden by the flags that were given."""
    given = {
        key.removeprefix("setting_"): value
        for key, value in vars(arguments).items()
        if key.startswith("setting_") and value is not None
    }
    given.update(overrides)
    try:
        return Settings(**given)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}"
            for e in error.errors(include_url=False)
        )
        raise SystemExit(f"florist-worker: invalid settings: {problems}") from None
