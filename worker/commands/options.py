"""What every command shares: flags generated from :class:`worker.settings.Settings`, and
the one way a command fails.

Every setting gets ``--<name>`` with its environment variable and default in the
help text, so ``--help``, the environment and the table in docs/operations.md say the same thing.

Every handler is wrapped by :func:`command`, so every command fails the same way: one
line on stderr, ``florist-worker <command>: error: <what is wrong>``, and an exit code
that says what kind of problem it was (:data:`EXIT_USAGE` for a bad flag, value,
setting or URL; :data:`EXIT_FAILURE` for a service that did not answer or refused, or a
configuration the worker cannot run with). No traceback, unless ``--debug`` or
``FLORIST_LOG_LEVEL=debug`` asks for one.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, NoReturn

import redis
from pydantic import ValidationError
from pymongo.errors import PyMongoError

from worker.errors import Misconfigured
from worker.logs import configure_logging
from worker.mongo_failures import describe as describe_mongodb_error
from worker.redis_failures import command_line
from worker.settings import (
    LOG_FORMATS,
    LOG_LEVELS,
    InvalidSetting,
    Settings,
    closest,
    env_name,
    redact_url,
    unknown_variables,
)
from worker.stream import DeadStreamMisconfigured

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "CommandError",
    "Failure",
    "Parser",
    "UsageError",
    "add_settings_flags",
    "command",
    "env_name",
    "error_line",
    "settings_from",
]

PROG: Final = "florist-worker"
EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1  # a service unreachable or refusing, a job not finished, misconfigured
EXIT_USAGE: Final = 2  # argparse's convention: a bad flag, value, setting or URL
EXIT_INTERRUPTED: Final = 130  # Ctrl-C, as a shell reports SIGINT

Handler = Callable[[argparse.Namespace], int]


class CommandError(Exception):
    """Ends a command with one line on stderr and :attr:`code` (1 unless said)."""

    code: int = EXIT_FAILURE

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class UsageError(CommandError):
    """A bad flag, argument or setting: exit 2."""

    code = EXIT_USAGE


class Failure(CommandError):
    """A runtime failure (a service did not answer or refused, nothing to act on): exit 1."""

    code = EXIT_FAILURE


# -- the one error style ------------------------------------------------------------------


def one_line(text: object) -> str:
    """``text`` with every run of whitespace (newlines included) made one space."""
    return " ".join(str(text).split())


def command_prog(prog: str) -> str:
    """``florist-worker dlq list`` -> ``florist-worker dlq``: errors name the command."""
    return " ".join(prog.split()[:2])


def error_line(command_name: str | None, message: object) -> str:
    where = f"{PROG} {command_name}" if command_name else PROG
    return f"{where}: error: {one_line(message)}"


def print_error(command_name: str | None, message: object) -> None:
    print(error_line(command_name, message), file=sys.stderr, flush=True)


def print_warning(command_name: str | None, message: object) -> None:
    where = f"{PROG} {command_name}" if command_name else PROG
    print(f"{where}: warning: {one_line(message)}", file=sys.stderr, flush=True)


def debugging(arguments: argparse.Namespace) -> bool:
    """``--debug``, or a log level of debug (flag or ``FLORIST_LOG_LEVEL``): tracebacks."""
    if getattr(arguments, "debug", False):
        return True
    level = getattr(arguments, "setting_log_level", None) or os.environ.get(
        env_name("log_level"), ""
    )
    return level.strip().lower() == "debug"


def describe(error: BaseException) -> tuple[str, int]:
    """The one-line message and exit code of an error a command did not handle itself."""
    if isinstance(error, CommandError):
        return str(error), error.code
    if isinstance(error, InvalidSetting):
        return f"invalid settings: {error}", EXIT_USAGE
    if isinstance(error, ValidationError):
        return f"invalid settings: {describe_validation_error(error)}", EXIT_USAGE
    if isinstance(error, Misconfigured | DeadStreamMisconfigured):
        return str(error), EXIT_FAILURE
    if isinstance(error, KeyboardInterrupt):
        return "interrupted", EXIT_INTERRUPTED
    if isinstance(error, redis.exceptions.MovedError | redis.exceptions.AskError):
        return (
            f"Redis: {type(error).__name__}: {error}: this Redis is a cluster; set "
            "FLORIST_REDIS_CLUSTER=true (docs/redis-ha.md)",
            EXIT_FAILURE,
        )
    if isinstance(error, redis.RedisError | redis.exceptions.RedisClusterException):
        return command_line(error, "(FLORIST_REDIS_URL)"), EXIT_FAILURE
    if isinstance(error, PyMongoError):
        return f"MongoDB: {describe_mongodb_error(error)}", EXIT_FAILURE
    if isinstance(error, OSError):
        return f"{type(error).__name__}: {error}", EXIT_FAILURE
    return (
        f"unexpected {type(error).__name__}: {error} (run with --debug for the traceback)",
        EXIT_FAILURE,
    )


def command(name: str, *, warn_environment: bool = True) -> Callable[[Handler], Handler]:
    """Wrap a command's handler: logging is configured first (see
    :func:`configure_command_logging`), and every error the handler lets through becomes
    one line on stderr and an exit code (see :func:`describe`); with ``warn_environment``,
    unknown ``FLORIST_*`` variables are reported as warnings first (``run`` logs them
    instead)."""

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        def run(arguments: argparse.Namespace) -> int:
            if warn_environment:
                for warning in unknown_variables():
                    print_warning(name, warning)
            try:
                configure_command_logging(arguments)
                return handler(arguments)
            except CommandError as error:
                print_error(name, error)
                return error.code
            except (Exception, KeyboardInterrupt) as error:
                if debugging(arguments) and not isinstance(error, KeyboardInterrupt):
                    raise
                message, code = describe(error)
                print_error(name, message)
                return code

        return run

    return decorate


def configure_command_logging(arguments: argparse.Namespace) -> None:
    """Every command logs as ``FLORIST_LOG_LEVEL`` and ``FLORIST_LOG_FORMAT`` say (its
    ``--log-level``/``--log-format`` flags first, where it has them). A value outside the
    choices is a usage error, also for a command that logs nothing."""
    chosen: dict[str, str] = {}
    for name, choices in (("log_level", LOG_LEVELS), ("log_format", LOG_FORMATS)):
        has_flag = f"setting_{name}" in vars(arguments)
        given = getattr(arguments, f"setting_{name}", None)
        if given is None:
            given = os.environ.get(env_name(name), shown_default(name))
        value = given.strip().lower()
        if value not in choices:
            where = f"{env_name(name)} or {flag_name(name)}" if has_flag else env_name(name)
            expected = f"{', '.join(map(repr, choices[:-1]))} or {choices[-1]!r}"
            raise UsageError(
                f"invalid settings: {name} ({where}): must be {expected}, got {given!r}"
            )
        chosen[name] = value
    configure_logging(chosen["log_level"], chosen["log_format"])


class Parser(argparse.ArgumentParser):
    """argparse, failing in the command line's one style.

    * the error names the command: ``florist-worker run: error: ...`` after that
      command's usage (not the top-level one), exit 2;
    * an unknown flag is named by the innermost parser that saw it (``run --bogus``
      prints run's usage), and a missing sub-command is reported after unknown flags
      (``florist-worker --bogus`` names ``--bogus``, not the missing COMMAND).

    Sub-commands must be added with ``required=False``; this class checks them.
    """

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{command_prog(self.prog)}: error: {one_line(message)}\n")

    def _hint(self, extras: Sequence[str]) -> str:
        """``(did you mean --batch-size?)`` for the first unknown flag close to one of
        this command's flags."""
        flags = [option for option in self._option_string_actions if option.startswith("--")]
        for extra in extras:
            close = closest(extra.split("=", 1)[0], flags) if extra.startswith("--") else None
            if close is not None:
                return f" (did you mean {close}?)"
        return ""

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}{self._hint(extras)}")
        for action in self._actions:
            missing = getattr(parsed, action.dest, None) is None
            if isinstance(action, argparse._SubParsersAction) and missing:
                choices = ", ".join(action.choices or ())
                self.error(f"missing {action.metavar}: one of {choices}")
        return parsed, extras


# -- settings as flags --------------------------------------------------------------------


# Defaults computed when the settings are read, as --help and docs/operations.md show them.
COMPUTED_DEFAULTS: Final = {
    "consumer": "<hostname>-<pid>-<random>",
    "dead_stream": "<stream>:dead",
}


def shown_default(name: str) -> str:
    """A setting's default as ``--help`` and docs/operations.md show it."""
    info = Settings.model_fields[name]
    if info.default_factory is not None:
        return COMPUTED_DEFAULTS.get(name, "<hostname>-<pid>")
    if info.default is None:
        return "unset"
    return str(info.default)


def metavar(name: str) -> str:
    """``redis_url`` -> ``URL``, ``mongodb_db`` -> ``DB``: the same for every command."""
    if name in ("log_level",):
        return "LEVEL"
    if Settings.model_fields[name].annotation is bool:
        return "BOOL"
    return name.split("_")[-1].upper()


def add_settings_flags(
    parser: argparse.ArgumentParser, fields: Iterable[str] | None = None
) -> None:
    """Add a flag per setting (or per name in ``fields``); unset flags leave env/defaults."""
    group = parser.add_argument_group("settings (flags override FLORIST_* environment variables)")
    wanted = None if fields is None else set(fields)
    for name, info in Settings.model_fields.items():
        if wanted is not None and name not in wanted:
            continue
        # A switch takes a value or none: --redis-cluster alone means --redis-cluster true.
        switch: dict[str, Any] = {"nargs": "?", "const": "true"} if info.annotation is bool else {}
        alone = " (the flag alone: true)" if switch else ""
        group.add_argument(
            f"--{name.replace('_', '-')}",
            dest=f"setting_{name}",
            default=None,
            metavar=metavar(name),
            help=f"{info.description}{alone} [env {env_name(name)}; default {shown_default(name)}]",
            **switch,
        )


def flag_name(setting: str) -> str:
    return f"--{setting.replace('_', '-')}"


def describe_validation_error(
    error: ValidationError, flags: Iterable[str] = (), *, flags_only: Iterable[str] = ()
) -> str:
    """One line: each bad setting with its variable (and flag, where the command has
    one; only the flag for ``flags_only``, settings a command takes from its flags
    alone), what is wrong, and the value given (URLs with their password hidden)."""
    flags, flags_only = set(flags), set(flags_only)
    problems = []
    for item in error.errors(include_url=False):
        if item["type"] == "default_factory_not_called":
            continue  # a default derived from a setting that is itself wrong: said above
        message = str(item["msg"]).removeprefix("Value error, ")
        location = [str(part) for part in item["loc"]]
        if not location:  # a check across settings: its message names them
            problems.append(message)
            continue
        name = location[0]
        where = env_name(name) if name in Settings.model_fields else name
        if name in flags_only:
            where = flag_name(name)
        elif name in flags:
            where = f"{where} or {flag_name(name)}"
        given = item.get("input")
        shown = ""
        if isinstance(given, str | int | float) and not isinstance(given, bool):
            text = redact_url(given) if isinstance(given, str) and "://" in given else given
            shown = "" if str(text) in message else f", got {text!r}"
        problems.append(f"{name} ({where}): {message}{shown}")
    return "; ".join(problems)


def settings_from(arguments: argparse.Namespace, **overrides: Any) -> Settings:
    """Settings from the environment, overridden by the flags that were given; a bad
    value raises :class:`UsageError` naming the setting, its variable and its flag."""
    given = {
        key.removeprefix("setting_"): value
        for key, value in vars(arguments).items()
        if key.startswith("setting_") and value is not None
    }
    given.update(overrides)
    flags = {key.removeprefix("setting_") for key in vars(arguments) if key.startswith("setting_")}
    try:
        return Settings(**given)
    except ValidationError as error:
        raise UsageError(f"invalid settings: {describe_validation_error(error, flags)}") from None
