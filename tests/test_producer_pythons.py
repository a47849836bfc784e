"""florist-events where FL processes run: Python 3.10 with pydantic 1.10, and 3.11-3.13.

FLorist and FL4Health require Python 3.10 and pin pydantic 1, so the producer is proven
there the way they would use it: a virtualenv of pyenv's Python 3.10 gets
``pip install ./producer 'pydantic>=1.10,<2' pytest fakeredis`` (a plain install from a
copy of producer/, as a user would run it), then

- the producer's own tests (producer/tests) run in it, on the session's private Redis;
- the 38-event sample run is published from it through StreamMetricsReporter, and the
  worker (this interpreter) turns it into the same final document as the sample entries
  published directly do.

The virtualenvs are kept in ``.venv-py310/`` (and ``.venv-py312/``, ``.venv-py313/``;
git ignores them) and reused while their requirements stay the same; the producer is
installed again when its sources change. A missing Python 3.10 fails this test under
CI (``CI=true``) and skips it elsewhere; 3.12 and 3.13 are checked when they are there.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mongomock_ng
import pytest
import redis

from tests.conftest import load_job_document, load_sample_entries
from tests.support import decoded_metrics, last_snapshots, make_worker
from worker.demo import ReportStep, StatusStep, plan_steps

ROOT = Path(__file__).resolve().parent.parent
PRODUCER = ROOT / "producer"
SCRIPT = Path(__file__).resolve().parent / "producer_script.py"

# What the CI virtualenv holds beside the producer: FLorist's pydantic pin, and what the
# producer's tests need.
PY310_REQUIREMENTS = ["pydantic>=1.10,<2", "pytest", "fakeredis"]
OTHER_REQUIREMENTS = ["pytest", "fakeredis"]

pytestmark = pytest.mark.redis_server


def find_python(minor: int) -> Path | None:
    """``python3.<minor>``: ``$FLORIST_PYTHON_3_<minor>``, pyenv's newest, or one on PATH."""
    override = os.environ.get(f"FLORIST_PYTHON_3_{minor}")
    if override:
        return Path(override)
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    installed = sorted(
        pyenv_root.glob(f"versions/3.{minor}.*/bin/python3.{minor}"),
        key=lambda path: tuple(int(part) for part in path.parts[-3].split(".") if part.isdigit()),
    )
    if installed:
        return installed[-1]
    found = shutil.which(f"python3.{minor}")
    return Path(found) if found else None


def python_or_skip(minor: int, *, required_in_ci: bool) -> Path:
    python = find_python(minor)
    if python is None or not python.exists():
        message = (
            f"Python 3.{minor} not found (looked for $FLORIST_PYTHON_3_{minor}, "
            f"~/.pyenv/versions/3.{minor}.*/bin/python3.{minor} and python3.{minor} on PATH)"
        )
        if required_in_ci and os.environ.get("CI") == "true":
            pytest.fail(f"{message}: CI must prove the producer on Python 3.{minor}")
        pytest.skip(message)
    return python


def sources_digest() -> str:
    digest = hashlib.sha256()
    files = [PRODUCER / "pyproject.toml", PRODUCER / "README.md"]
    files += sorted(path for path in (PRODUCER / "src").rglob("*") if path.is_file())
    for path in files:
        if "__pycache__" in path.parts or path.suffix == ".pyc" or ".egg-info" in str(path):
            continue
        digest.update(str(path.relative_to(PRODUCER)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@contextlib.contextmanager
def producer_copy() -> Iterator[Path]:
    """producer/ copied to a temporary folder: pip builds there, never in the work tree."""
    with tempfile.TemporaryDirectory(prefix="florist-events-") as folder:
        target = Path(folder) / "producer"
        shutil.copytree(
            PRODUCER,
            target,
            ignore=shutil.ignore_patterns(
                "build", "*.egg-info", "__pycache__", ".pytest_cache", "tests"
            ),
        )
        yield target


def run(*command: str | Path, timeout: float = 600, **options: Any) -> str:
    completed = subprocess.run(
        [str(part) for part in command],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **options,
    )
    if completed.returncode != 0:
        pytest.fail(
            f"{' '.join(str(part) for part in command)} exited {completed.returncode}\n"
            f"--- stdout\n{completed.stdout[-8000:]}\n--- stderr\n{completed.stderr[-8000:]}"
        )
    return completed.stdout


def producer_venv(python: Path, name: str, requirements: list[str]) -> Path:
    """A virtualenv of ``python`` with the producer and ``requirements``; made or reused."""
    venv = ROOT / f".venv-py{name}"
    venv_python = venv / "bin" / "python"
    wanted = json.dumps({"python": str(python), "requirements": requirements})
    with (ROOT / f".venv-py{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test run may be making it right now
        stamp = venv / ".florist-requirements"
        installed = venv / ".florist-producer"
        pip = [venv_python, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
        if not venv_python.exists() or not stamp.exists() or stamp.read_text() != wanted:
            shutil.rmtree(venv, ignore_errors=True)
            run(python, "-m", "venv", venv)
            with producer_copy() as copy:
                run(*pip, "install", copy, *requirements)
            stamp.write_text(wanted)
            installed.write_text(sources_digest())
        elif not installed.exists() or installed.read_text() != sources_digest():
            with producer_copy() as copy:
                run(*pip, "install", "--no-deps", "--force-reinstall", copy)
            installed.write_text(sources_digest())
    return venv_python


@pytest.fixture(scope="module")
def py310() -> Path:
    python = python_or_skip(10, required_in_ci=True)
    return producer_venv(python, "310", PY310_REQUIREMENTS)


def producer_tests(python: Path, redis_url: str) -> str:
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("FLORIST_", "PYTEST_", "VIRTUAL_ENV", "PYTHON"))
    }
    environment |= {"FLORIST_TEST_REDIS_URL": redis_url, "PYTHONDONTWRITEBYTECODE": "1"}
    return run(
        python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests",
        cwd=PRODUCER, env=environment, timeout=300,
    )  # fmt: skip


def test_python_310_venv_holds_the_producer_beside_pydantic_1(py310: Path) -> None:
    report = run(
        py310,
        "-c",
        "import sys, pydantic, florist_events, importlib.metadata as m;"
        "print(sys.version_info[:2], pydantic.VERSION, florist_events.__version__,"
        " sorted(r.split('>')[0] for r in m.requires('florist-events') if 'extra' not in r))",
    )
    assert report.startswith("(3, 10) 1.10."), report
    assert "0.1.0 ['redis']" in report, report


def test_producer_tests_pass_on_python_310(py310: Path, redis_url: str) -> None:
    output = producer_tests(py310, redis_url)
    assert " passed" in output and "failed" not in output, output


@pytest.mark.parametrize("minor", [12, 13])
def test_producer_tests_pass_on_later_pythons(minor: int, redis_url: str) -> None:
    python = python_or_skip(minor, required_in_ci=False)
    venv_python = producer_venv(python, f"3{minor}", OTHER_REQUIREMENTS)
    output = producer_tests(venv_python, redis_url)
    assert " passed" in output and "failed" not in output, output


def test_producer_tests_pass_on_this_python(redis_url: str) -> None:
    output = producer_tests(Path(sys.executable), redis_url)
    assert " passed" in output and "failed" not in output, output


def steps_as_json(entries: list[dict[str, str]]) -> list[dict[str, Any]]:
    events = [
        {**fields, "metrics": json.loads(fields["metrics"])} if "metrics" in fields else fields
        for fields in entries
    ]
    steps: list[dict[str, Any]] = []
    for step in plan_steps(events):
        if isinstance(step, StatusStep):
            steps.append({"status": step.status.value})
        else:
            assert isinstance(step, ReportStep)
            steps.append({"host": step.host, "data": step.data, "round": step.round})
    return steps


def final_document(client: redis.Redis, stream: str, job_document: dict[str, Any]) -> Any:
    """What the worker makes of ``stream`` for the sample job, and what it left behind."""
    database = mongomock_ng.MongoClient()["florist-server"]
    database["job"].insert_one(job_document)
    names = {"stream": stream, "group": f"{stream}:group", "dead_stream": f"{stream}:dead"}
    worker = make_worker(client, database, **names)
    counts = worker.drain()
    document = database["job"].find_one({"_id": job_document["_id"]})
    pending = client.xpending(stream, names["group"])["pending"]
    dead = client.xlen(names["dead_stream"]) if client.exists(names["dead_stream"]) else 0
    return document, counts, pending, dead


def test_sample_run_from_the_python_310_reporter_gives_today_s_document(
    py310: Path, redis_url: str
) -> None:
    job_document = load_job_document()
    samples = load_sample_entries()
    assert len(samples) == 38
    client = redis.Redis.from_url(redis_url, socket_timeout=10)
    from_310 = f"test-py310-{uuid.uuid4()}"
    today = f"test-direct-{uuid.uuid4()}"
    try:
        plan = {
            "url": redis_url,
            "stream": from_310,
            "job_id": job_document["_id"],
            "steps": steps_as_json(samples),
        }
        output = run(py310, SCRIPT, input=json.dumps(plan), timeout=120)
        report = json.loads(output.strip().splitlines()[-1])
        assert report["python"][:2] == [3, 10]
        assert report["pydantic"].startswith("1.10.")
        assert report["pending"] == []

        for fields in samples:  # today's path: the sample entries as they are
            client.xadd(today, dict(fields))

        document, counts, pending, dead = final_document(client, from_310, job_document)
        expected, expected_counts, _, _ = final_document(client, today, job_document)
        assert (pending, dead) == (0, 0)
        assert set(counts) <= {"applied", "coalesced"}, counts
        assert sum(expected_counts.values()) == 38
        assert document["status"] == expected["status"] == "FINISHED_SUCCESSFULLY"
        assert document.get("error_message") == expected.get("error_message")
        assert decoded_metrics(document) == decoded_metrics(expected)
        server, clients = decoded_metrics(document)
        last_server, last_clients = last_snapshots(samples)
        assert server == last_server
        assert clients == [last_clients[info["uuid"]] for info in document["clients_info"]]
    finally:
        for stream in (from_310, today):
            client.delete(stream, f"{stream}:dead")
        client.close()
