"""The README and docs/CONTRACT.md say what the code does: the configuration table, the
Python example (executed as written), the contract's names, outcomes and entry fields,
and links that stay inside the repository."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis

from worker.commands.options import env_name, shown_default
from worker.events import entry_json_schema
from worker.outcomes import Outcome
from worker.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CONTRACT = ROOT / "docs" / "CONTRACT.md"
DEPLOY_README = ROOT / "deploy" / "README.md"
ROW = re.compile(r"^\| `(FLORIST_[A-Z_]+)` \| `--([a-z-]+)` \| (.+?) \| (.+?) \|$")
# The outcomes of the v1 specification, and store_error: the contract must keep them.
V1_OUTCOMES = {
    "applied",
    "duplicate",
    "coalesced",
    "rejected_transition",
    "invalid",
    "unsupported_version",
    "unknown_job",
    "unknown_client",
    "lost",
}


def _section(text: str, title: str) -> str:
    return text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def _table() -> dict[str, tuple[str, str]]:
    section = _section(README.read_text(), "Configuration")
    rows = {}
    for line in section.splitlines():
        match = ROW.match(line)
        if match:
            rows[match.group(1)] = (match.group(2), match.group(3).strip("`"))
    return rows


def test_every_setting_is_in_the_readme_and_nothing_else():
    table = _table()
    assert set(table) == {env_name(name) for name in Settings.model_fields}


def test_flags_and_defaults_in_the_readme_match_the_model():
    table = _table()
    for name, field in Settings.model_fields.items():
        flag, default = table[env_name(name)]
        assert flag == name.replace("_", "-")
        if field.default_factory is not None:
            continue  # computed per process: <hostname>-<pid>, <tmp>/...
        expected = "unset" if field.default is None else str(field.default)
        assert default == expected, name


def test_every_command_is_documented():
    text = README.read_text()
    from worker.cli import COMMANDS

    for command in COMMANDS:
        assert command in _section(text, "Command line")


def test_run_help_documents_every_setting_with_its_default_once(capsys, monkeypatch):
    from worker.cli import main

    monkeypatch.setenv("COLUMNS", "2000")  # no wrapping inside names

    with pytest.raises(SystemExit) as exited:
        main(["run", "--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for name in Settings.model_fields:
        assert f"--{name.replace('_', '-')}" in text
        assert f"env {env_name(name)}; default {shown_default(name)}]" in text, name
    assert "default None" not in text
    assert "PosixPath" not in text
    assert text.count("<hostname>-<pid>") == 1  # --consumer's default, shown once
    assert "[env FLORIST_METRICS_PORT; default unset]" in text


# -- the Python example, executed as written ------------------------------------------------


def python_example() -> str:
    """The first python block of the README's Python surface section."""
    section = _section(README.read_text(), "Python surface")
    found = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert found, "the README's Python surface section has no python block"
    return found.group(1)


def expected_output(code: str) -> list[str]:
    """What the example says it prints: the comment after each ``print(...)`` line."""
    return [
        line.split("  # ", 1)[1].strip()
        for line in code.splitlines()
        if line.startswith("print(") and "  # " in line
    ]


@pytest.mark.redis_server
def test_the_readme_python_example_runs_as_written(
    redis_url: str, real_redis: redis.Redis, tmp_path: Path
) -> None:
    """Run like a user would: the block saved as a script, in a fresh interpreter, against
    a private redis-server (FLORIST_REDIS_URL) on streams of its own; it must print what
    its comments say, and log nothing on stdout."""
    code = python_example()
    script = tmp_path / "example.py"
    script.write_text(code)
    names = f"readme-{uuid.uuid4().hex[:8]}"
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith("FLORIST_")
    }
    environment |= {
        "FLORIST_REDIS_URL": redis_url,
        "FLORIST_STREAM": f"{names}:events",
        "FLORIST_DEAD_STREAM": f"{names}:dead",
        "FLORIST_GROUP": names,
    }
    try:
        runs = [  # a user tries it twice: the second run must say the same
            subprocess.run(
                [sys.executable, str(script)],
                capture_output=True,
                text=True,
                timeout=60,
                env=environment,
                cwd=tmp_path,
                check=False,
            )
            for _ in range(2)
        ]
    finally:
        real_redis.delete(f"{names}:events", f"{names}:dead")
    for completed in runs:
        assert completed.returncode == 0, completed.stderr
        assert completed.stdout.splitlines() == expected_output(code)
        assert "Traceback" not in completed.stderr
        assert "entry handled" not in completed.stderr  # no debug line per event
    assert real_redis.keys("florist-example:*") == []  # it cleans up after itself


def test_the_python_example_shows_both_databases_and_the_imports_it_uses():
    code = python_example()
    assert "mongomock_ng.MongoClient()" in code  # for a try-out
    assert "pymongo.MongoClient(settings.mongodb_uri)" in code  # for real
    assert "redis.Redis.from_url(" in code
    assert "insert_one(" in code  # a job document
    assert len(expected_output(code)) >= 3


# -- docs/CONTRACT.md -----------------------------------------------------------------------


def test_the_readme_links_the_contract_in_the_repository():
    text = README.read_text()
    assert "](docs/CONTRACT.md)" in text
    assert CONTRACT.is_file()
    assert "../shared" not in text


@pytest.mark.parametrize("document", [README, CONTRACT, DEPLOY_README], ids=lambda p: p.name)
def test_links_stay_in_the_repository_or_go_to_public_sites(document: Path):
    for target in re.findall(r"\]\(([^)\s]+)\)", document.read_text()):
        if target.startswith(("http://", "https://", "#")):
            continue
        path = (document.parent / target.split("#", 1)[0]).resolve()
        assert path.is_relative_to(ROOT), f"{document.name} links outside the repository: {target}"
        assert path.exists(), f"{document.name} links a missing file: {target}"


def _contract_table(title: str) -> list[list[str]]:
    section = _section(CONTRACT.read_text(), title)
    rows = []
    for line in section.splitlines():
        if line.startswith("| ") and not line.startswith("| ---"):
            rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return rows[1:]  # without the header


def test_the_contract_names_and_defaults_match_the_settings():
    rows = _contract_table("Names and defaults")
    assert rows
    for _what, default, variable in rows:
        name = variable.strip("`").removeprefix("FLORIST_").lower()
        assert name in Settings.model_fields, variable
        assert default.strip("`") == shown_default(name), variable


def test_the_contract_outcomes_are_the_codes():
    rows = _contract_table("Outcomes")
    names = [row[0].split(" (", 1)[0] for row in rows]  # "`invalid` (why...)" -> "`invalid`"
    documented = {name for cell in names for name in re.findall(r"`([a-z_]+)`", cell)}
    assert documented == {outcome.value for outcome in Outcome}
    assert V1_OUTCOMES | {"store_error", "internal_error"} <= documented


def test_the_contract_entry_fields_are_the_schemas():
    rows = _contract_table("Stream entries")
    documented = {row[0].strip("`") for row in rows}
    schema = entry_json_schema()
    in_schema = {
        field
        for definition in schema["$defs"].values()
        for field in definition.get("properties", {})
    }
    assert documented <= in_schema
    assert {"v", "type", "job_id", "client_uuid", "metrics", "status"} <= documented


def test_the_contract_lists_every_command_and_exit_code():
    from worker.cli import COMMANDS

    section = _section(CONTRACT.read_text(), "Command line")
    for command in COMMANDS:
        assert command in section
    codes = [row[0] for row in _contract_table("Command line")]
    assert codes == ["0", "1", "2", "130"]


def test_deploy_readme_says_logs_go_to_stderr():
    text = DEPLOY_README.read_text()
    assert "on **stderr**" in text
    assert "log line on stdout" not in text


def test_the_readme_acl_lines_are_the_deploy_files():
    """The README shows the ACL users as deploy/redis-acl.conf defines them."""
    root = Path(__file__).resolve().parent.parent
    conf = [
        line
        for line in (root / "deploy" / "redis-acl.conf").read_text().splitlines()
        if line.startswith("user ")
    ]
    shown = [line for line in README.read_text().splitlines() if line.startswith("user ")]
    assert shown == conf
