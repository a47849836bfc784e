"""``--help`` everywhere: every command, action and kind has a description; a flag has one
metavar whichever command it belongs to; defaults are shown once, never as ``None``."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from worker.cli import COMMANDS, build_parser, main


def parsers(
    parser: argparse.ArgumentParser | None = None,
) -> Iterator[argparse.ArgumentParser]:
    """The top-level parser and every sub-command's, depth first."""
    parser = parser or build_parser()
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield from parsers(child)


def subcommand_help(parser: argparse.ArgumentParser) -> dict[str, str | None]:
    """``{name: one-line help}`` of the sub-commands a parser offers."""
    helps: dict[str, str | None] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                helps[choice.dest] = choice.help
    return helps


def help_text(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--help"])
    assert exited.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_every_command_action_and_kind_has_a_description_and_a_help_line() -> None:
    every = list(parsers())
    names = {parser.prog for parser in every}
    for command in COMMANDS:
        assert f"florist-worker {command}" in names
    for action in ("list", "show", "requeue", "drop"):
        assert f"florist-worker dlq {action}" in names
    for kind in ("server-metrics", "client-metrics", "status", "raw"):
        assert f"florist-worker emit {kind}" in names
    for parser in every:
        assert parser.description, f"{parser.prog} has no description"
        for name, line in subcommand_help(parser).items():
            assert line, f"{parser.prog} {name} has no one-line help"


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["schema"], "Print the JSON Schema of a v1 stream entry"),
        (["dlq", "show"], "Print every field of one dead letter"),
        (["dlq", "requeue"], "origin_id kept"),
        (["emit", "raw"], "without validation"),
        (["emit", "status"], "Publish a job.status event"),
    ],
)
def test_descriptions_show_in_help(
    argv: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert words in help_text(argv, capsys)


def test_a_flag_has_the_same_metavar_in_every_command() -> None:
    seen: dict[str, tuple[str, str]] = {}
    for parser in parsers():
        for action in parser._actions:
            if not action.option_strings or action.nargs == 0:
                continue  # switches take no value
            metavar = str(action.metavar or action.dest.upper())
            for option in action.option_strings:
                first = seen.setdefault(option, (metavar, parser.prog))
                assert first[0] == metavar, (
                    f"{option} is {first[0]} in {first[1]} but {metavar} in {parser.prog}"
                )


def test_demo_uses_the_metavars_of_the_other_commands(capsys: pytest.CaptureFixture[str]):
    text = help_text(["demo"], capsys)
    for flag in ("--redis-url URL", "--mongodb-uri URI", "--mongodb-db DB"):
        assert flag in text


@pytest.mark.parametrize(
    "argv", [[command] for command in COMMANDS if command not in ("dlq", "emit")]
)
def test_no_default_shows_as_none_or_as_a_python_object(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    text = help_text(argv, capsys)
    assert "default None" not in text
    assert "PosixPath" not in text


def test_the_consumer_default_is_shown_once(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_text(["run"], capsys)
    assert text.count("<hostname>-<pid>") == 1
    assert "--metrics-port PORT port of the Prometheus /metrics endpoint" in text
    assert "default unset]" in text


# Each command's argv before its flags (dlq and emit have an action or kind first).
CLUSTER_COMMANDS = {
    "run": ["run"],
    "replay": ["replay"],
    "dlq": ["dlq", "list"],
    "stats": ["stats"],
    "emit": ["emit", "raw", "--fields", "{}"],
    "demo": ["demo"],
}


@pytest.mark.parametrize("argv", CLUSTER_COMMANDS.values(), ids=CLUSTER_COMMANDS)
def test_redis_cluster_is_a_switch_that_also_takes_a_value_in_every_command(
    argv: list[str],
) -> None:
    parse = build_parser().parse_args
    assert parse([*argv, "--redis-cluster"]).setting_redis_cluster == "true"
    assert parse([*argv, "--redis-cluster", "false"]).setting_redis_cluster == "false"
    assert parse([*argv, "--redis-cluster", "true"]).setting_redis_cluster == "true"
    assert parse(argv).setting_redis_cluster is None  # the environment decides


def test_every_command_with_a_redis_url_has_the_cluster_flag() -> None:
    def commands_with(flag: str) -> set[str]:
        return {
            parser.prog.removeprefix("florist-worker ").split()[0]
            for parser in parsers()
            if any(flag in action.option_strings for action in parser._actions)
        }

    assert commands_with("--redis-url") == commands_with("--redis-cluster") == set(CLUSTER_COMMANDS)
