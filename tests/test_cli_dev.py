"""``./dev test-mongodb URI`` (pytest with ``FLORIST_TEST_MONGODB_URI=URI``) with no MongoDB
at URI stops before any test, in seconds, with one line (tests/conftest.py pings the URI
first). Run as ./dev runs it, past ./dev's own set-up of .venv, whose lines would depend on
the state of the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.redis_server import free_port

DEV = Path(__file__).resolve().parent.parent / "dev"


def test_a_session_against_an_unreachable_mongodb_stops_in_seconds_with_one_line() -> None:
    port = free_port()
    uri = f"mongodb://127.0.0.1:{port}/"
    environment = {k: v for k, v in os.environ.items() if not k.upper().startswith("FLORIST_")}
    environment["FLORIST_TEST_MONGODB_URI"] = uri  # what ./dev test-mongodb URI sets
    assert "FLORIST_TEST_MONGODB_URI=$uri exec" in DEV.read_text()
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "tests/test_entities.py"],
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
        cwd=DEV.parent,
        check=False,
    )
    took_s = time.monotonic() - began
    assert done.returncode == 4  # pytest's usage error
    assert [line for line in done.stderr.splitlines() if line.strip()] == [
        f"ERROR: FLORIST_TEST_MONGODB_URI={uri}: no MongoDB to test against "
        f"(ServerSelectionTimeoutError: 127.0.0.1:{port}: [Errno 111] Connection refused; "
        "waited 3 s)"
    ]
    assert done.stdout == ""
    assert took_s < 30, took_s
