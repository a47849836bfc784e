"""`./dev` never reuses a .venv of the wrong Python silently: it stops with the command
that fixes it (`rm -rf .venv`), and refuses to make a .venv with a Python older than 3.11.

Each test runs a copy of the real `dev` script in a scratch directory, with stand-in
interpreters that answer the two questions the script asks (the version, and whether it
is older than 3.11), so nothing is installed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def fake_python(path: Path, version: str) -> Path:
    """A stand-in interpreter of ``version`` ("3.10") for the script's two questions."""
    older = tuple(int(part) for part in version.split(".")) < (3, 11)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "#!/bin/sh\n"
        'case "$2" in\n'
        f"  *print*) echo {version} ;;\n"
        f"  *exit*) exit {int(older)} ;;\n"
        "  *) exit 3 ;;\n"
        "esac\n"
    )
    path.chmod(0o755)
    return path


def run_dev(
    directory: Path, *arguments: str, python: str | None = None
) -> subprocess.CompletedProcess[str]:
    shutil.copy(ROOT / "dev", directory / "dev")
    environment = {"PATH": "/usr/bin:/bin"}
    if python is not None:
        environment["PYTHON"] = python
    return subprocess.run(
        ["bash", str(directory / "dev"), *arguments],
        capture_output=True,
        text=True,
        timeout=30,
        env=environment,
        check=False,
    )


def test_a_venv_of_an_old_python_is_refused_with_the_fix(tmp_path: Path) -> None:
    fake_python(tmp_path / ".venv" / "bin" / "python", "3.10")
    completed = run_dev(tmp_path, "lint")
    assert completed.returncode == 1
    assert ".venv is of Python 3.10, not 3.11 or newer" in completed.stderr
    assert "rm -rf .venv" in completed.stderr


def test_a_venv_of_another_python_than_the_chosen_one_is_refused(tmp_path: Path) -> None:
    fake_python(tmp_path / ".venv" / "bin" / "python", "3.11")
    wanted = fake_python(tmp_path / "python3.12", "3.12")
    completed = run_dev(tmp_path, "test", python=str(wanted))
    assert completed.returncode == 1
    assert ".venv is of Python 3.11, not 3.12" in completed.stderr
    assert "rm -rf .venv" in completed.stderr


def test_a_venv_whose_interpreter_is_gone_is_refused(tmp_path: Path) -> None:
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").symlink_to(tmp_path / "removed-python")
    completed = run_dev(tmp_path, "demo")
    assert completed.returncode == 1
    assert ".venv is of Python (broken)" in completed.stderr
    assert "rm -rf .venv" in completed.stderr


def test_no_venv_is_made_with_a_python_older_than_3_11(tmp_path: Path) -> None:
    old = fake_python(tmp_path / "python3.10", "3.10")
    completed = run_dev(tmp_path, "lint", python=str(old))
    assert completed.returncode == 1
    assert "is not a Python 3.11 or newer" in completed.stderr
    assert not (tmp_path / ".venv").exists()


def test_a_matching_venv_goes_on_to_the_command(tmp_path: Path) -> None:
    """The check lets a right .venv through: setup then reaches the install step, which
    the stand-in cannot do (so it fails there, past the check)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    fake_python(tmp_path / ".venv" / "bin" / "python", version)
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "producer").mkdir()
    (tmp_path / "producer" / "pyproject.toml").write_text("")
    completed = run_dev(tmp_path, "lint")
    assert "rm -rf .venv" not in completed.stderr
    assert "dev: installing florist-worker" in completed.stderr


def run_container_check(tmp_path: Path, docker: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(ROOT / "deploy" / "test-container.sh")],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "DOCKER": docker},
        check=False,
    )


def test_the_container_check_names_a_missing_docker_command(tmp_path: Path) -> None:
    completed = run_container_check(tmp_path, "no-such-docker")
    assert completed.returncode == 1
    assert "no no-such-docker command: install a Docker engine" in completed.stderr


def test_the_container_check_says_when_no_engine_runs(tmp_path: Path) -> None:
    """A docker client whose `docker info` fails, as when no daemon is listening."""
    client = tmp_path / "docker"
    client.write_text('#!/bin/sh\necho "Cannot connect to the Docker daemon" >&2\nexit 1\n')
    client.chmod(0o755)
    completed = run_container_check(tmp_path, str(client))
    assert completed.returncode == 1
    assert "finds no running engine: start one" in completed.stderr
    assert "dockerd" in completed.stderr
