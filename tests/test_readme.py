"""The README's configuration table and the settings model say the same thing."""

from __future__ import annotations

import re
from pathlib import Path

from worker.commands.options import env_name
from worker.settings import Settings

README = Path(__file__).resolve().parent.parent / "README.md"
ROW = re.compile(r"^\| `(FLORIST_[A-Z_]+)` \| `--([a-z-]+)` \| (.+?) \| (.+?) \|$")


def _table() -> dict[str, tuple[str, str]]:
    section = README.read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
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
        assert command in text.split("## Command line", 1)[1]


def test_run_help_documents_every_setting_with_its_default(capsys, monkeypatch):
    import pytest

    from worker.cli import main

    monkeypatch.setenv("COLUMNS", "2000")  # no wrapping inside names

    with pytest.raises(SystemExit) as exited:
        main(["run", "--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for name, field in Settings.model_fields.items():
        assert f"--{name.replace('_', '-')}" in text
        assert f"env {env_name(name)}; default" in text
        if field.default_factory is None:
            assert f"env {env_name(name)}; default {field.default}]" in text, name
