"""The documentation says what the code does: the README's code runs as written (the Python
example, the two terminals, the install lines), the producer README's snippet runs, the
configuration table of docs/operations.md is the settings model, the contract's names,
outcomes and entry fields are the code's, links stay inside the repository, and the front
door stays a front door (short, with no history of how the project was built)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from florist_events import check_entry

from tests.redis_server import free_port
from worker.commands.options import env_name, shown_default
from worker.events import entry_json_schema
from worker.outcomes import Outcome
from worker.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CONTRACT = ROOT / "docs" / "CONTRACT.md"
OPERATIONS = ROOT / "docs" / "operations.md"
DEPLOY_README = ROOT / "deploy" / "README.md"
PRODUCER_README = ROOT / "producer" / "README.md"
# The documents a newcomer reads: none of them tells how the project was built.
FRONT_DOCUMENTS = [
    README,
    ROOT / "CONTRIBUTING.md",
    OPERATIONS,
    ROOT / "docs" / "architecture.md",
    ROOT / "bench" / "README.md",
    DEPLOY_README,
    PRODUCER_README,
]
SAMPLE_JOB = ROOT / "worker" / "samples" / "job.json"
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
    section = _section(OPERATIONS.read_text(), "Configuration")
    rows = {}
    for line in section.splitlines():
        match = ROW.match(line)
        if match:
            rows[match.group(1)] = (match.group(2), match.group(3).strip("`"))
    return rows


def test_every_setting_is_in_the_configuration_table_and_nothing_else():
    table = _table()
    assert set(table) == {env_name(name) for name in Settings.model_fields}


def test_flags_and_defaults_in_the_configuration_table_match_the_model():
    table = _table()
    for name, field in Settings.model_fields.items():
        flag, default = table[env_name(name)]
        assert flag == name.replace("_", "-")
        if field.default_factory is not None:
            continue  # computed per process: <hostname>-<pid>, <tmp>/...
        expected = "unset" if field.default is None else str(field.default)
        assert default == expected, name


def test_every_command_is_documented():
    from worker.cli import COMMANDS

    for command in COMMANDS:
        assert command in _section(OPERATIONS.read_text(), "Command line")
        assert f"`{command}`" in README.read_text()


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


def code_block(path: Path, title: str, language: str, index: int = 0) -> str:
    """The ``index``-th ``language`` block of a section of a markdown file."""
    section = _section(path.read_text(), title) if title else path.read_text()
    found = re.findall(rf"```{language}\n(.*?)```", section, re.DOTALL)
    assert len(found) > index, f"{path.name} {title!r} has no {language} block {index}"
    return found[index]


def python_example() -> str:
    """The python block of the README's "Use it from Python" section."""
    return code_block(README, "Use it from Python", "python")


def expected_output(code: str) -> list[str]:
    """What the example says it prints: the comment after each ``print(...)`` line."""
    return [
        line.split("  # ", 1)[1].strip()
        for line in code.splitlines()
        if line.startswith("print(") and "  # " in line
    ]


def clean_environment(**settings: str) -> dict[str, str]:
    """This process's environment without FLORIST_* variables, plus ``settings``."""
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith("FLORIST_")
    }
    return environment | settings


def run_script(
    code: str, tmp_path: Path, environment: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``code`` saved as a script and run in a fresh interpreter, as a user would."""
    script = tmp_path / f"script-{uuid.uuid4().hex[:8]}.py"
    script.write_text(code)
    return subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment,
        cwd=tmp_path,
        check=False,
    )


@pytest.mark.redis_server
def test_the_readme_python_example_runs_as_written(
    redis_url: str, real_redis: redis.Redis, tmp_path: Path
) -> None:
    """Against a private redis-server (FLORIST_REDIS_URL) on streams of its own, twice: it
    must print what its comments say both times, and log nothing on stdout."""
    code = python_example()
    names = f"readme-{uuid.uuid4().hex[:8]}"
    environment = clean_environment(
        FLORIST_REDIS_URL=redis_url,
        FLORIST_STREAM=f"{names}:events",
        FLORIST_DEAD_STREAM=f"{names}:dead",
        FLORIST_GROUP=names,
    )
    try:
        runs = [run_script(code, tmp_path, environment) for _ in range(2)]
    finally:
        real_redis.delete(f"{names}:events", f"{names}:dead")
    for completed in runs:
        assert completed.returncode == 0, completed.stderr
        assert completed.stdout.splitlines() == expected_output(code)
        assert "Traceback" not in completed.stderr
        assert "entry handled" not in completed.stderr  # no debug line per event
    assert real_redis.keys("florist-example:*") == []  # it cleans up after itself


def test_the_readme_python_example_runs_with_no_redis_server(tmp_path: Path) -> None:
    """A newcomer with nothing on port 6379: the example falls back to an in-process
    Redis and prints the same."""
    code = python_example()
    closed = f"redis://127.0.0.1:{free_port()}/0"
    completed = run_script(code, tmp_path, clean_environment(FLORIST_REDIS_URL=closed))
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.splitlines() == expected_output(code)


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


@pytest.mark.parametrize(
    "document",
    [CONTRACT, *FRONT_DOCUMENTS],
    ids=lambda p: str(p.relative_to(ROOT)),
)
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


# -- the front door --------------------------------------------------------------------------


def test_the_readme_is_a_front_door():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    titles = re.findall(r"^## (.+)$", text, re.MULTILINE)
    assert titles == [
        "Two commands",
        "Try it end to end: two terminals",
        "Use it from Python",
        "Install for production",
        "Where to go next",
    ]
    commands = _section(text, "Two commands")
    assert re.search(r"\./dev demo +# about \d+ s", commands)  # durations, measured
    assert re.search(r"\./dev test +# \d+ to \d+ minutes", commands)


@pytest.mark.parametrize("document", FRONT_DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_document_tells_how_the_project_was_built(document: Path):
    text = document.read_text()
    for pattern in [
        r"\bthis session\b",
        r"\bthat night\b",
        r"\bissues? \d+",
        r"\bcommit [0-9a-f]{7,40}\b",
        r"\bthe machine this was built on\b",
    ]:
        assert not re.search(pattern, text, re.IGNORECASE), f"{document.name}: {pattern}"


# -- trying it end to end from two terminals --------------------------------------------------


def terminal_two(port: int) -> str:
    """The README's terminal 2: the Python the shell block feeds to the interpreter, with
    the port of the test's private redis-server."""
    block = code_block(README, "Try it end to end: two terminals", "sh", index=1)
    code = block.split("<<'EOF'\n", 1)[1].rsplit("EOF", 1)[0]
    assert "port=6379" in code
    return code.replace("port=6379", f"port={port}")


@pytest.mark.redis_server
def test_terminal_two_publishes_the_sample_job_s_run_by_its_server_uuid(
    redis_url: str, real_redis: redis.Redis, tmp_path: Path
) -> None:
    """What terminal 2 publishes is a whole server run of the sample job, by the sample's
    server uuid, every entry one the worker accepts, the last one finishing the job."""
    stream = f"readme-terminal-{uuid.uuid4().hex[:8]}:events"
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    server_uuid = json.loads(SAMPLE_JOB.read_text())["server_uuid"]
    try:
        completed = run_script(
            terminal_two(port), tmp_path, clean_environment(FLORIST_STREAM=stream)
        )
        assert completed.returncode == 0, completed.stderr
        assert completed.stdout.strip() == "published; pending: False"
        entries = real_redis.xrange(stream)
        fields = [
            {key.decode(): value.decode() for key, value in entry.items()} for _, entry in entries
        ]
        assert [entry["type"] for entry in fields] == ["server.metrics"] * 5
        assert {entry["server_uuid"] for entry in fields} == {server_uuid}
        for entry in fields:
            check_entry(entry)  # raises InvalidEvent where the worker would refuse it
        assert "fit_end" in json.loads(fields[-1]["metrics"])
    finally:
        real_redis.delete(stream, server_uuid)


@pytest.mark.redis_server
def test_the_two_terminals_apply_the_run_without_mongodb(
    redis_url: str, real_redis: redis.Redis, tmp_path: Path
) -> None:
    """Terminal 1's worker (memory://, jobs from the sample file) applies what terminal 2
    publishes from another process: the group reads every entry, acknowledges it, and
    dead-letters nothing (an unknown job would stay pending)."""
    executable = str(Path(sys.executable).parent / "florist-worker")
    names = f"readme-two-{uuid.uuid4().hex[:8]}"
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    environment = clean_environment(
        FLORIST_STREAM=f"{names}:events",
        FLORIST_DEAD_STREAM=f"{names}:dead",
        FLORIST_REDIS_URL=redis_url,
        FLORIST_HEARTBEAT_FILE=str(tmp_path / "heartbeat"),
    )
    command = code_block(README, "Try it end to end: two terminals", "sh", index=0)
    worker_line = next(line for line in command.splitlines() if "florist-worker run" in line)
    arguments = shlex.split(worker_line)[1:]  # after .venv/bin/florist-worker
    log = tmp_path / "worker.log"
    with log.open("w") as stderr:
        worker = subprocess.Popen(
            [executable, *arguments], cwd=ROOT, env=environment, stdout=subprocess.DEVNULL,
            stderr=stderr,
        )  # fmt: skip
    server_uuid = json.loads(SAMPLE_JOB.read_text())["server_uuid"]

    def groups_once(ready: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
        """The stream's groups, once ``ready`` says so (within 30 s, the worker alive)."""
        deadline = time.monotonic() + 30
        while True:
            groups = (
                real_redis.xinfo_groups(names_events) if real_redis.exists(names_events) else []
            )
            if ready(groups):
                return groups
            assert worker.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"{groups}\n{log.read_text()}"
            time.sleep(0.1)

    names_events = f"{names}:events"
    try:
        groups_once(bool)  # the user waits for terminal 1's worker to start
        completed = run_script(terminal_two(port), tmp_path, environment)
        assert completed.returncode == 0, completed.stderr
        groups = groups_once(lambda found: found[0]["pending"] == 0 and found[0]["lag"] == 0)
        assert groups[0]["entries-read"] == 5
        assert real_redis.exists(f"{names}:dead") == 0
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        real_redis.delete(f"{names}:events", f"{names}:dead", server_uuid)


# -- installing without Docker ----------------------------------------------------------------


def test_the_readme_install_lines_install_a_working_worker(tmp_path: Path) -> None:
    """The README's lines, as written but for the virtualenv's place, in a fresh virtualenv:
    the locked versions with their hashes, then the two local distributions, give a
    florist-worker whose requirements are all met."""
    block = code_block(README, "Install for production", "sh")
    clone = tmp_path / "clone"  # setuptools builds in the source tree: not in this one
    ignored = shutil.ignore_patterns("__pycache__", "build", "*.egg-info", "tests")
    for part in ("worker", "producer", "deploy"):
        shutil.copytree(ROOT / part, clone / part, ignore=ignored)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, clone / name)
    venv = tmp_path / "venv"
    script = block.replace("/opt/florist-worker", str(venv)).replace(
        "python3 -m venv", f"{sys.executable} -m venv"
    )
    completed = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script + f"\n{venv}/bin/pip check\n"],
        cwd=clone,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    assert "usage: florist-worker" in completed.stdout
    assert "No broken requirements found" in completed.stdout


# -- the producer README ------------------------------------------------------------------------


@pytest.mark.redis_server
def test_the_producer_readme_snippet_runs_as_fl4health_would_drive_it(
    redis_url: str, real_redis: redis.Redis, tmp_path: Path
) -> None:
    """The snippet runs as written against REDIS_HOST/REDIS_PORT, calls the reporter's
    initialize, report and shutdown, and leaves on the stream entries the worker
    accepts: the server's snapshots by uuid (per-epoch data kept out, as FLorist does) and
    the status event."""
    code = code_block(PRODUCER_README, "", "python")
    for call in ("reporter.initialize(", "reporter.report(", "reporter.shutdown()"):
        assert call in code
    stream = f"producer-readme-{uuid.uuid4().hex[:8]}:events"
    host, port = redis_url.removeprefix("redis://").split("/")[0].split(":")
    environment = clean_environment(REDIS_HOST=host, REDIS_PORT=port, FLORIST_STREAM=stream)
    try:
        completed = run_script(code, tmp_path, environment)
        assert completed.returncode == 0, completed.stderr
        assert completed.stdout.splitlines() == expected_output(code)
        fields = [
            {key.decode(): value.decode() for key, value in entry.items()}
            for _, entry in real_redis.xrange(stream)
        ]
        assert [entry["type"] for entry in fields] == ["server.metrics"] * 4 + ["job.status"]
        for entry in fields:
            check_entry(entry)  # raises InvalidEvent where the worker would refuse it
        assert len({entry["server_uuid"] for entry in fields}) == 1
        assert all("loss" not in json.loads(entry.get("metrics", "{}")) for entry in fields)
    finally:
        keys = [
            key for key in real_redis.scan_iter(count=1000) if re.fullmatch(rb"[0-9a-f-]{36}", key)
        ]
        real_redis.delete(stream, *keys)
