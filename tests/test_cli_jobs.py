"""``florist-worker run --jobs FILE``: the in-memory database filled from a file of Job
documents, so that a worker on embedded defaults applies what other processes publish."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.test_cli_run import CLI, Lines
from worker.cli import main
from worker.entities import Job
from worker.jobsfile import JobsFileError, read_jobs

SAMPLE_JOBS = Path(__file__).resolve().parent.parent / "worker" / "samples" / "jobs.json"
SERVER_UUID = "d73243cf-8b89-473b-9607-8cd0253a101d"
CLIENT_UUIDS = ["0c316680-1375-4e07-84c3-a732a2e6d03f", "5f0e6b1c-2b8e-4a8e-9d3e-2f1c7a9b4d21"]
STRANGER_UUID = "11111111-2222-3333-4444-555555555555"

# What terminal 2 of the README runs: FLorist's reporter form, by uuid, no job id.
PUBLISHER = """
import sys
from florist_events import StreamMetricsReporter
host, port, server_uuid, client_uuid, stranger_uuid = sys.argv[1:]
server = StreamMetricsReporter(host=host, port=port, run_id=server_uuid)
client = StreamMetricsReporter(host=host, port=port, run_id=client_uuid)
stranger = StreamMetricsReporter(host=host, port=port, run_id=stranger_uuid)
server.report({"host_type": "server", "fit_start": "2024-10-10 15:05:59"})
client.report({"host_type": "client", "initialized": "2024-10-10 15:06:00"})
server.report({"fit_end": "2024-10-10 15:07:00"})
stranger.report({"host_type": "server", "fit_start": "2024-10-10 15:05:59"})
for reporter in (server, client, stranger):
    reporter.shutdown()
assert not any(reporter.pending for reporter in (server, client, stranger))
"""


def _environment(redis_url: str, stream: str, tmp_path: Path) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.upper().startswith("FLORIST_")}
    return environment | {
        "FLORIST_REDIS_URL": redis_url,
        "FLORIST_STREAM": stream,
        "FLORIST_HEARTBEAT_FILE": str(tmp_path / "heartbeat"),
        "FLORIST_LOG_FORMAT": "json",
        "FLORIST_RETRY_IDLE_MS": "200",
    }


def _stats(environment: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(
        [str(CLI), "stats", "--json", "--mongodb-uri", "memory://"],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=True,
    )
    stats: dict[str, Any] = json.loads(done.stdout)
    return stats


@pytest.mark.redis_server
def test_run_with_the_sample_jobs_file_applies_events_another_process_publishes_by_uuid(
    redis_url: str, tmp_path: Path
) -> None:
    stream = f"test:jobs:{uuid.uuid4().hex}"
    environment = _environment(redis_url, stream, tmp_path)
    worker = subprocess.Popen(
        [str(CLI), "run", "--mongodb-uri", "memory://", "--jobs", str(SAMPLE_JOBS)],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=environment,
    )
    try:
        lines = Lines(worker)
        serving = lines.wait_for("serving a job of the jobs file", 30)
        assert serving["server_uuid"] == SERVER_UUID
        assert serving["client_uuids"] == CLIENT_UUIDS
        assert serving["status"] == "NOT_STARTED"
        lines.wait_for("consumer group created", 30)

        host, port = redis_url.removeprefix("redis://").split("/")[0].split(":")
        subprocess.run(
            [
                sys.executable,
                "-c",
                PUBLISHER,
                host,
                port,
                SERVER_UUID,
                CLIENT_UUIDS[0],
                STRANGER_UUID,
            ],
            env=environment,
            timeout=60,
            check=True,
        )
        waiting = lines.wait_for("entry kept pending for a retry", 30)
        assert waiting["outcome"] == "unknown_job"
        assert waiting["server_uuid"] == STRANGER_UUID
        assert "job_id" not in waiting

        deadline = time.monotonic() + 30
        while (stats := _stats(environment))["lag"] != 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert stats["lag"] == 0
        assert stats["pending"] == 1  # the stranger's entry, waiting for its job

        worker.send_signal(signal.SIGTERM)
        summary = lines.wait_for("summary", 30)
        assert worker.wait(timeout=30) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert summary["counts"]["applied"] == 3  # two server snapshots, one client snapshot
    assert summary["counts"]["unknown_job"] >= 1
    assert summary["dead_lettered"] == 0
    at_exit = lines.wait_for("a job of the jobs file at exit", 30)
    assert at_exit["status"] == "FINISHED_SUCCESSFULLY"  # the server's fit_end
    assert json.loads(at_exit["server_metrics"])["fit_end"] == "2024-10-10 15:07:00"
    assert json.loads(at_exit["client_metrics"][0]) == {
        "host_type": "client",
        "initialized": "2024-10-10 15:06:00",
    }
    assert at_exit["client_metrics"][1] is None
    assert "Traceback" not in "".join(lines.seen)


def test_the_sample_jobs_file_holds_the_sample_job_and_its_uuids() -> None:
    (job,) = read_jobs(SAMPLE_JOBS)
    assert job.server_uuid == SERVER_UUID
    assert [info.uuid for info in job.clients_info or ()] == CLIENT_UUIDS


def _run(arguments: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["run", *arguments])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("", "holds no job"),
        ("[]", "holds no job"),
        ("[{", "not JSON"),
        ('{"_id": "a"}\n{"_id": ', "line 2: not JSON"),
        ('"a job"', "expected a JSON array of Job documents"),
        ("[1]", "job 1: not a JSON object"),
        ('[{"_id": "a", "status": "RUNNING"}]', "job 1 (_id 'a'): status: Input should be"),
        ('[{"_id": "a"}, {"_id": "a"}]', "in more than one job: _id 'a'"),
        (
            '{"_id": "a", "server_uuid": "s"}\n{"_id": "b", "server_uuid": "s"}',
            "in more than one job: server_uuid 's'",
        ),
    ],
)
def test_a_bad_jobs_file_is_one_line_and_exit_2(
    content: str, problem: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "jobs.json"
    path.write_text(content)
    code, err = _run(["--mongodb-uri", "memory://", "--jobs", str(path)], capsys)
    assert code == 2
    assert err.count("\n") == 1
    assert err.startswith(f"florist-worker run: error: jobs file {path}: ")
    assert problem in err


def test_a_missing_jobs_file_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere.json"
    code, err = _run(["--mongodb-uri", "memory://", "--jobs", str(missing)], capsys)
    assert (code, err) == (
        2,
        f"florist-worker run: error: jobs file {missing}: cannot be read "
        "(No such file or directory)\n",
    )


def test_jobs_need_the_in_memory_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _run(["--mongodb-uri", "mongodb://db:27017", "--jobs", str(SAMPLE_JOBS)], capsys)
    assert code == 2
    assert "--jobs loads jobs into the in-memory database: add --mongodb-uri memory://" in err


def test_json_lines_and_a_single_object_are_read_as_the_model_reads_them(tmp_path: Path) -> None:
    lines = tmp_path / "jobs.jsonl"
    lines.write_text('{"_id": "a", "server_uuid": "s1"}\n\n{"_id": "b", "status": "IN_PROGRESS"}\n')
    assert [(job.id, job.server_uuid) for job in read_jobs(lines)] == [("a", "s1"), ("b", None)]
    single = tmp_path / "job.json"
    single.write_text(json.dumps(Job(_id="c", server_uuid="s3").to_document(), indent=2))
    assert [job.id for job in read_jobs(single)] == ["c"]
    with pytest.raises(JobsFileError, match="in more than one job: client uuid 'u'"):
        clients = [{"client": "MNIST", "service_address": "x", "data_path": "p"}]
        info = [{**clients[0], "redis_host": "h", "redis_port": "1", "uuid": "u"}]
        lines.write_text("\n".join(json.dumps({"_id": n, "clients_info": info}) for n in "de"))
        read_jobs(lines)
