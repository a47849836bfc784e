"""One way to fail: every command answers a bad flag, value, setting or URL with exit 2,
a runtime failure with exit 1, each on one line ``florist-worker <command>: error: ...``
on stderr, and never with a traceback unless --debug (or FLORIST_LOG_LEVEL=debug)."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from hypothesis import given
from hypothesis import settings as examples
from hypothesis import strategies as st

from tests.redis_server import free_port
from worker import deadletter
from worker.cli import COMMANDS, build_parser, main
from worker.commands import demo as demo_command
from worker.commands import replay as replay_command
from worker.commands import run as run_command
from worker.commands import stats as stats_command
from worker.errors import Misconfigured
from worker.stream import DeadStreamMisconfigured

CLI = Path(sys.executable).with_name("florist-worker")
ERROR_LINE = re.compile(r"^florist-worker(?: [a-z]+)?: error: \S.*$")

# One leaf per command: the argv that reaches its handler (dlq and emit have actions).
LEAVES = {
    "run": ["run"],
    "replay": ["replay"],
    "dlq": ["dlq", "list"],
    "stats": ["stats"],
    "emit": ["emit", "status", "--job", "j", "--status", "IN_PROGRESS"],
    "demo": ["demo", "--fake-redis", "--fast"],
    "schema": ["schema"],
    "healthcheck": ["healthcheck"],
}
REDIS_URL_COMMANDS = ("run", "replay", "dlq", "stats", "emit", "demo")
MONGODB_URI_COMMANDS = ("run", "replay", "demo")
SETTINGS_COMMANDS = ("run", "replay", "dlq", "stats", "emit", "demo", "healthcheck")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No FLORIST_* variable of the caller's (an unknown one would add a warning line)."""
    for name in list(os.environ):
        if name.upper().startswith("FLORIST_"):
            monkeypatch.delenv(name)


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``florist-worker ARGV`` through the real entry point, in this process."""
    try:
        code = main(argv)
    except SystemExit as exited:  # argparse's own exits (usage errors, --help)
        code = exited.code if isinstance(exited.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(err: str, command: str | None, *fragments: str) -> str:
    """stderr ends with the one error line of ``command``; nothing like a traceback."""
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert lines, "nothing on stderr"
    last = lines[-1]
    prefix = f"florist-worker {command}: error: " if command else "florist-worker: error: "
    assert last.startswith(prefix), err
    assert ERROR_LINE.match(last), last
    for fragment in fragments:
        assert fragment in last, (fragment, last)
    return last


def closed_redis_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


# -- usage errors: exit 2 ------------------------------------------------------------------


def test_a_bad_top_level_flag_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(["--bogus"], capsys)
    assert code == 2 and out == ""
    assert_one_error_line(err, None, "unrecognized arguments: --bogus")
    assert "COMMAND" not in err.splitlines()[-1]


def test_a_bad_top_level_flag_before_a_command_is_named(capsys: pytest.CaptureFixture[str]):
    code, _out, err = run_main(["--bogus", "schema"], capsys)
    assert code == 2
    assert_one_error_line(err, None, "--bogus")


def test_no_command_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run_main([], capsys)
    assert code == 2
    assert_one_error_line(err, None, "missing COMMAND", ", ".join(COMMANDS))


def test_an_unknown_command_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run_main(["bogus"], capsys)
    assert code == 2
    assert_one_error_line(err, None, "invalid choice: 'bogus'", "'healthcheck'")


@pytest.mark.parametrize("command", COMMANDS)
def test_a_bad_flag_prints_that_commands_usage_and_names_the_flag(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_main([*LEAVES[command], "--bogus"], capsys)
    assert code == 2 and out == ""
    leaf = " ".join(word for word in LEAVES[command][:2] if not word.startswith("-"))
    assert err.startswith(f"usage: florist-worker {leaf} ")
    assert_one_error_line(err, command, "unrecognized arguments: --bogus")


@pytest.mark.parametrize(("command", "metavar"), [("dlq", "ACTION"), ("emit", "KIND")])
def test_a_missing_action_or_kind_is_named(
    command: str, metavar: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _out, err = run_main([command], capsys)
    assert code == 2
    assert_one_error_line(err, command, f"missing {metavar}")
    code, _out, err = run_main([command, "--bogus"], capsys)
    assert code == 2
    assert_one_error_line(err, command, "unrecognized arguments: --bogus")


@pytest.mark.parametrize("command", REDIS_URL_COMMANDS)
def test_a_bad_redis_url_is_a_usage_error_naming_flag_and_variable(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*LEAVES[command], "--redis-url", "nope://x"]
    if command == "demo":
        argv.remove("--fake-redis")  # exclusive with --redis-url
    code, out, err = run_main(argv, capsys)
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1, err
    variable = [] if command == "demo" else ["FLORIST_REDIS_URL"]  # demo ignores the env
    assert_one_error_line(err, command, "redis_url", "--redis-url", "nope://", *variable)


@pytest.mark.parametrize("command", MONGODB_URI_COMMANDS)
def test_a_bad_mongodb_uri_is_a_usage_error(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _out, err = run_main([*LEAVES[command], "--mongodb-uri", "nope://x"], capsys)
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert_one_error_line(err, command, "mongodb_uri", "--mongodb-uri", "mongodb://")


def test_a_uri_pymongo_refuses_is_a_usage_error_without_the_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _out, err = run_main(
        ["replay", "--mongodb-uri", "mongodb://u:s3cret@h:99999/", "--redis-url", "redis://x"],
        capsys,
    )
    assert code == 2
    assert_one_error_line(err, "replay", "mongodb_uri")
    assert "s3cret" not in err


@pytest.mark.parametrize("command", SETTINGS_COMMANDS)
def test_a_bad_setting_in_the_environment_names_the_variable(
    command: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLORIST_MAX_DELIVERIES", "none")
    code, out, err = run_main(LEAVES[command], capsys)
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1, err
    assert_one_error_line(err, command, "invalid settings", "FLORIST_MAX_DELIVERIES", "'none'")


@pytest.mark.parametrize("variable", ["FLORIST_LOG_LEVEL", "FLORIST_LOG_FORMAT"])
@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_refuses_a_bad_log_level_or_format(
    command: str, variable: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, "verbose")
    code, out, err = run_main(LEAVES[command], capsys)
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1, err
    name = variable.removeprefix("FLORIST_").lower()
    assert_one_error_line(err, command, "invalid settings", name, variable, "'verbose'")


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["run", "--log-level", "degub"], ["FLORIST_LOG_LEVEL or --log-level", "'degub'"]),
        (["run", "--log-format", "xml"], ["log_format", "'json', 'console' or 'auto'"]),
        (["replay", "--log-level", "loud"], ["log_level"]),
        (["run", "--max-deliveries", "0"], ["max_deliveries", "FLORIST_MAX_DELIVERIES"]),
        (["run", "--block-ms", "9000"], ["block_ms", "below the Redis socket timeout"]),
        (["run", "--mongodb-db", "a.b"], ["mongodb_db", "not a MongoDB database name"]),
        (["stats", "--socket-timeout-s", "soon"], ["socket_timeout_s", "'soon'"]),
        (["healthcheck", "--heartbeat-ttl-s", "x"], ["heartbeat_ttl_s"]),
        (["run", "--metrics-port", "70000"], ["metrics_port"]),
    ],
)
def test_a_bad_setting_flag_names_it(
    argv: list[str], fragments: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _out, err = run_main(argv, capsys)
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert_one_error_line(err, argv[0], "invalid settings", *fragments)


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["replay", "--to", "next tuesday"], "next tuesday"),
        (["replay", "--page-size", "0"], "--page-size"),
        (["replay", "--outage-timeout", "-1"], "--outage-timeout"),
        (["replay", "--page-size", "many"], "invalid int value"),
        (["dlq", "list", "--limit", "-1"], "--limit"),
        (["dlq", "requeue"], "IDs, --all or --reason"),
        (["dlq", "drop", "--all"], "--yes"),
        (["dlq", "show", "yesterday"], "yesterday"),
        (["emit", "status", "--job", "j", "--status", "DONE"], "unknown status 'DONE'"),
        (["emit", "server-metrics", "--job", "j", "--metrics", "[1]"], "JSON object"),
        (["emit", "server-metrics", "--job", "j"], "--metrics"),
        (["demo", "--fake-redis", "--pace", "-1"], "--pace must be 0 or more"),
        (["demo", "--fake-redis", "--redis-url", "redis://x"], "not allowed with"),
        (["stats", "--watch", "0"], "above 0"),
        (["replay", "--from", "2024-01-02", "--to", "2024-01-01"], "comes after --to 2024-01-01"),
        (["replay", "--from", "5-1", "--to", "5-0"], "--from 5-1 comes after --to 5-0"),
        (["replay", "--from", "+", "--to", "5"], "comes after"),
        (["dlq", "drop", "--reason", "bogus", "--yes"], "invalid choice: 'bogus'"),
        (["dlq", "requeue", "--reason", "applied"], "invalid choice: 'applied'"),
        (["dlq", "list", "--reason", "unknown-job"], "(choose from 'internal_error', 'invalid',"),
        (["emit", "server-metrics", "--metrics", "{}"], "--job JOB_ID or --server-uuid UUID"),
        (["emit", "status", "--status", "IN_PROGRESS"], "--job JOB_ID or --server-uuid UUID"),
        (["demo", "--fake-redis", "--redis-cluster", "maybe"], "FLORIST_REDIS_CLUSTER"),
        (["demo", "--redis-cluster"], "--redis-cluster needs --redis-url"),
    ],
)
def test_a_bad_argument_is_a_usage_error(
    argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if argv[0] in ("dlq", "emit"):
        argv = [*argv, "--redis-url", closed_redis_url()]  # never reached
    code, out, err = run_main(argv, capsys)
    assert code == 2 and out == ""
    assert_one_error_line(err, argv[0], fragment)


# -- runtime failures: exit 1 --------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["stats", "--socket-timeout-s", "3"], "did not answer"),
        (["dlq", "list"], "Redis redis://127.0.0.1:"),
        (["dlq", "requeue", "--all"], "Redis redis://127.0.0.1:"),
        (["emit", "status", "--job", "j", "--status", "IN_PROGRESS"], "cannot publish"),
        (["replay", "--mongodb-uri", "memory://"], "Redis redis://127.0.0.1:"),
        (["demo", "--fast"], "did not answer"),
    ],
)
def test_an_unreachable_redis_is_a_runtime_failure(
    argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _out, err = run_main([*argv, "--redis-url", closed_redis_url()], capsys)
    assert code == 1
    assert_one_error_line(err, argv[0], fragment)
    if argv[0] != "replay":  # replay logs memory://'s warning through structlog first
        assert len(err.splitlines()) == 1, err


@pytest.mark.parametrize(
    "argv",
    [
        ["stats"],
        ["dlq", "list"],
        ["dlq", "drop", "--all", "--yes"],
        ["emit", "status", "--job", "j", "--status", "IN_PROGRESS"],
        ["replay", "--mongodb-uri", "memory://"],
    ],
)
def test_a_redis_that_refuses_the_user_says_so_and_names_the_acl(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A wrong password (WRONGPASS) is a refusal, not an unreachable Redis: every command
    says to check the user, its password and the ACL, in one line, exit 1."""
    url = "redis://florist-nobody:wrong-password@127.0.0.1:6379/0"
    code, _out, err = run_main([*argv, "--redis-url", url], capsys)
    assert code == 1
    last = assert_one_error_line(err, argv[0], "refused", "ACL")
    assert "wrong-password" not in err and "did not answer" not in last


def raiser(error: BaseException) -> Callable[..., None]:
    def fail(*_args: object, **_kwargs: object) -> None:
        raise error

    return fail


MISCONFIGURATIONS = [
    Misconfigured("FLORIST_MONGODB_URI: w=0 cannot confirm a write; use w=1 or more"),
    DeadStreamMisconfigured("the dead-letter key 'florist:events:dead' holds a string"),
]


@pytest.fixture
def refusing(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str, BaseException], None]]:
    """Make ``command``'s work raise ``error`` where that command would first meet it."""

    def patch(command: str, error: BaseException) -> None:
        if command == "run":
            monkeypatch.setattr(run_command, "Worker", raiser(error))
        elif command == "replay":
            monkeypatch.setattr(replay_command, "run_replay", raiser(error))
        elif command == "dlq":
            monkeypatch.setattr(deadletter, "list_dead_letters", raiser(error))
        elif command == "demo":
            monkeypatch.setattr(demo_command, "run_demo", raiser(error))
        elif command == "stats":
            monkeypatch.setattr(stats_command, "collect_stats", raiser(error))

    yield patch


@pytest.mark.parametrize("error", MISCONFIGURATIONS, ids=lambda error: type(error).__name__)
@pytest.mark.parametrize("command", ["run", "replay", "dlq", "demo"])
def test_a_misconfiguration_is_one_line_and_exit_1(
    command: str,
    error: Exception,
    refusing: Callable[[str, BaseException], None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    refusing(command, error)
    argv = [*LEAVES[command]]
    if command in ("run", "replay"):
        argv += ["--mongodb-uri", "memory://", "--redis-url", closed_redis_url()]
    if command == "dlq":
        argv += ["--redis-url", closed_redis_url()]
    code, _out, err = run_main(argv, capsys)
    assert code == 1
    assert_one_error_line(err, command, str(error))


@pytest.mark.redis_server
def test_run_refuses_a_dead_letter_key_that_is_not_a_stream(
    redis_url: str, real_redis: redis.Redis, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    real_redis.set("florist:events:dead", "not a stream")
    code, _out, err = run_main(
        [
            "run",
            "--redis-url",
            redis_url,
            "--mongodb-uri",
            "memory://",
            "--heartbeat-file",
            str(tmp_path / "hb"),
            "--log-format",
            "json",
        ],
        capsys,
    )
    assert code == 1
    assert_one_error_line(err, "run", "florist:events:dead", "string")
    assert real_redis.get("florist:events:dead") == b"not a stream"


# -- unexpected errors: one line, or the traceback when asked ------------------------------


def test_an_unexpected_error_is_one_line_pointing_at_debug(
    refusing: Callable[[str, BaseException], None], capsys: pytest.CaptureFixture[str]
) -> None:
    refusing("stats", RuntimeError("boom"))
    code, out, err = run_main(["stats", "--redis-url", closed_redis_url()], capsys)
    assert code == 1 and out == ""
    assert len(err.splitlines()) == 1
    assert_one_error_line(err, "stats", "unexpected RuntimeError: boom", "--debug")


def test_debug_shows_the_traceback(
    refusing: Callable[[str, BaseException], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    refusing("stats", RuntimeError("boom"))
    with pytest.raises(RuntimeError, match="boom"):
        main(["--debug", "stats", "--redis-url", closed_redis_url()])
    with pytest.raises(RuntimeError, match="boom"):
        main(["stats", "--debug", "--redis-url", closed_redis_url()])
    monkeypatch.setenv("FLORIST_LOG_LEVEL", "DEBUG")
    with pytest.raises(RuntimeError, match="boom"):
        main(["stats", "--redis-url", closed_redis_url()])


def test_ctrl_c_is_one_line_and_exit_130(
    refusing: Callable[[str, BaseException], None], capsys: pytest.CaptureFixture[str]
) -> None:
    refusing("replay", KeyboardInterrupt())
    code, _out, err = run_main(
        ["replay", "--mongodb-uri", "memory://", "--redis-url", closed_redis_url()], capsys
    )
    assert code == 130
    assert_one_error_line(err, "replay", "interrupted")


# -- unknown FLORIST_* variables: a warning, not an error ----------------------------------


def test_an_unknown_variable_is_a_warning_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLORIST_STREM", "x")
    code, out, err = run_main(["schema"], capsys)
    assert code == 0
    assert out.startswith("{")
    assert err == (
        "florist-worker schema: warning: ignoring unknown environment variable FLORIST_STREM "
        "(did you mean FLORIST_STREAM?)\n"
    )


def test_version_and_help_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _err = run_main(["--version"], capsys)
    assert code == 0 and out.startswith("florist-worker ")
    code, out, _err = run_main(["--help"], capsys)
    assert code == 0 and "Exit codes: 0 done, 1 a runtime failure" in " ".join(out.split())


# -- the console script, as a user runs it -------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "code", "command", "fragment"),
    [
        (["--bogus"], 2, None, "unrecognized arguments: --bogus"),
        (["run", "--bogus"], 2, "run", "unrecognized arguments: --bogus"),
        (["stats", "--redis-url", "nope://x"], 2, "stats", "FLORIST_REDIS_URL"),
        (["run", "--mongodb-uri", "nope://x"], 2, "run", "FLORIST_MONGODB_URI"),
        (["dlq", "list", "--redis-url", "nope://x"], 2, "dlq", "redis_url"),
        (["replay", "--redis-url", "nope://x"], 2, "replay", "redis_url"),
        (["run", "--log-level", "loud"], 2, "run", "log_level"),
        (["emit", "status", "--job", "j", "--status", "DONE"], 2, "emit", "DONE"),
        (["demo", "--mongodb-uri", "nope://x"], 2, "demo", "--mongodb-uri"),
        (["healthcheck", "--heartbeat-ttl-s", "-1"], 2, "healthcheck", "heartbeat_ttl_s"),
        (["stats", "--redis-url", "CLOSED", "--socket-timeout-s", "3"], 1, "stats", "Redis"),
    ],
)
def test_the_console_script(argv: list[str], code: int, command: str | None, fragment: str) -> None:
    assert CLI.exists(), f"florist-worker is not installed next to {sys.executable}"
    argv = [closed_redis_url() if word == "CLOSED" else word for word in argv]
    environment = {k: v for k, v in os.environ.items() if not k.upper().startswith("FLORIST_")}
    completed = subprocess.run(
        [str(CLI), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
        check=False,
    )
    assert completed.returncode == code, completed.stderr
    assert completed.stdout == ""
    assert_one_error_line(completed.stderr, command, fragment)
    if not argv[-1].startswith("--bogus") and argv != ["--bogus"]:
        assert len(completed.stderr.splitlines()) == 1, completed.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["stats", "--redis-url", "nope://u:s3cret@h:1/0"],
        ["dlq", "list", "--redis-url", "redis://u:s3cret@h:port/0"],
        ["run", "--mongodb-uri", "postgres://u:s3cret@h/db"],
        ["dlq", "list", "--redis-url", "redis://u:s3cret@127.0.0.1:PORT/0"],
        ["emit", "raw", "--fields", '{"v": "1"}', "--redis-url", "redis://:s3cret@127.0.0.1:PORT"],
    ],
)
def test_no_password_in_an_error_line(argv: list[str], capsys: pytest.CaptureFixture[str]):
    argv = [word.replace("PORT", str(free_port())) for word in argv]
    code, _out, err = run_main(argv, capsys)
    assert code in (1, 2)
    last = assert_one_error_line(err, argv[0])
    assert "s3cret" not in err and "***" in last


# -- MongoDB errors and the metrics port: one short line -----------------------------------


def test_an_unreachable_mongodb_is_one_short_line(capsys: pytest.CaptureFixture[str]) -> None:
    uri = f"mongodb://127.0.0.1:{free_port()}/"
    code, _out, err = run_main(["demo", "--fake-redis", "--fast", "--mongodb-uri", uri], capsys)
    assert code == 1
    last = assert_one_error_line(err, "demo", f"MongoDB at {uri} did not answer", "refused")
    assert "Topology" not in last and "configured timeouts" not in last
    assert len(last) < 200, last


def test_a_metrics_port_in_use_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _out, err = run_main(
            ["run", "--metrics-port", str(port), "--redis-url", closed_redis_url()], capsys
        )
    assert code == 1
    assert_one_error_line(err, "run", f"cannot serve /metrics on port {port}", "--metrics-port")


def test_replay_takes_bounds_within_one_millisecond(
    redis_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLORIST_STREAM", f"test:bounds:{os.getpid()}")
    argv = ["replay", "--from", "5", "--to", "5", "--mongodb-uri", "memory://"]
    code, out, _err = run_main([*argv, "--redis-url", redis_url], capsys)
    assert code == 0
    assert out.startswith("read 0 entries")


# -- a mistyped flag: the nearest flag of that command is suggested ------------------------


def _flag_lines() -> list[tuple[list[str], str]]:
    """(the command words, one of its long flags) for every command and sub-command."""
    found: list[tuple[list[str], str]] = []

    def walk(parser: argparse.ArgumentParser, words: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    walk(child, [*words, name])
            else:
                flags = [o for o in action.option_strings if o.startswith("--") and len(o) > 5]
                found.extend((words, flag) for flag in flags if flag != "--help")

    walk(build_parser(), [])
    return [(words, flag) for words, flag in found if words]


FLAG_LINES = _flag_lines()


@examples(max_examples=300 * int(os.environ.get("FLORIST_FUZZ_SCALE", "1")), deadline=None)
@given(data=st.data())
def test_a_mistyped_flag_names_the_flag_it_was_close_to(data: st.DataObject) -> None:
    """Any flag of any command with one letter dropped, doubled or swapped: one error line,
    exit 2, suggesting a real flag of that command."""
    words, flag = data.draw(st.sampled_from(FLAG_LINES))
    at = data.draw(st.integers(3, len(flag) - 2))
    kind = data.draw(st.sampled_from(["drop", "double", "swap"]))
    typo = {
        "drop": flag[:at] + flag[at + 1 :],
        "double": flag[:at] + flag[at] + flag[at:],
        "swap": flag[:at] + flag[at + 1] + flag[at] + flag[at + 2 :],
    }[kind]
    if typo == flag:
        return
    command = build_parser()
    for word in words:
        command = next(
            a for a in command._actions if isinstance(a, argparse._SubParsersAction)
        ).choices[word]
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), pytest.raises(SystemExit) as exited:
        build_parser().parse_args([*words, *_required(command), typo])
    assert exited.value.code == 2
    last = stderr.getvalue().splitlines()[-1]
    match = re.search(r"\(did you mean (--[a-z0-9-]+)\?\)$", last)
    assert match is not None, last
    assert match.group(1) in command._option_string_actions, last  # one of its own flags


def _required(command: argparse.ArgumentParser) -> list[str]:
    """Values for the command's required arguments (argparse reports them missing first)."""
    words: list[str] = []
    for action in command._actions:
        if not action.required or isinstance(action, argparse._SubParsersAction):
            continue
        value = str(next(iter(action.choices))) if action.choices else "1-0"
        words += [action.option_strings[0], value] if action.option_strings else [value]
    return words
