"""FLorist's start sequence, end to end, with the drop-in reporter and a worker.

Played as FLorist's start route (``florist/api/routes/server/training.py``) runs it, with
its timing shape: the job exists first; the route sets it IN_PROGRESS; the server is
launched with ``StreamMetricsReporter(host=..., port=..., run_id=server_uuid)`` and reports
``fit_start`` at once (by server uuid, before any job knows that uuid); the route's
``wait_for_metric(server_uuid, "fit_start")`` finds it in the ``<server_uuid>`` key; each
client is started over HTTP in turn, reporting by its own uuid as soon as it is set up;
only then does the route store the uuids (``Job.set_uuids``). Training goes on to
``fit_end`` and shutdown. A worker drains the stream all along (between the steps, as its
loop would), so the first events are tried again and again before ``set_uuids``.

The final document must hold every host's last snapshot, FINISHED_SUCCESSFULLY, with
nothing dead-lettered and nothing pending. Producers and worker find their stream through
``FLORIST_STREAM`` alone.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import redis
from florist_events import StreamMetricsReporter
from pymongo.database import Database

from tests.async_mongo import open_async_database
from worker.consumer import Worker
from worker.entities import JOB_COLLECTION_NAME, ClientInfo, Job, JobStatus
from worker.settings import Settings

pytestmark = [
    pytest.mark.redis_server,
]

STEP_S = 0.3  # between FLorist's steps: each HTTP call to a client service, each round
CLIENTS = 2
ROUNDS = 2


def wait_for_metric(client: redis.Redis, key: str, metric: str, retries: int = 20) -> None:
    """FLorist's wait_for_metric: poll GET <uuid> until the snapshot has ``metric``."""
    for _ in range(retries):
        raw = client.get(key)
        if raw is not None and metric in json.loads(raw.decode("utf8")):
            return
        time.sleep(0.05)
    raise AssertionError(f"Metric '{metric}' not been found after {retries} retries.")


def test_florist_start_sequence_ends_in_the_right_document(
    redis_url: str,
    database: Database[Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = f"test-start-{uuid.uuid4()}"
    monkeypatch.setenv("FLORIST_STREAM", stream)
    monkeypatch.setenv("FLORIST_DEAD_STREAM", f"{stream}:dead")
    monkeypatch.setenv("FLORIST_GROUP", "florist-worker")
    parsed = urlparse(redis_url)
    host, port = parsed.hostname or "127.0.0.1", str(parsed.port or 6379)
    client = redis.Redis.from_url(redis_url, socket_timeout=10)
    worker = Worker(
        client,
        database,
        Settings(
            consumer="start-sequence",
            retry_idle_ms=100,  # retries come quickly here; the waiting is time-based
            heartbeat_file=tmp_path / "heartbeat",
            backoff_initial_s=0.01,
            backoff_max_s=0.05,
        ),
    )
    reporters: list[StreamMetricsReporter] = []
    counts: dict[str, int] = {}

    def drain() -> None:
        for outcome, count in worker.drain().items():
            counts[outcome] = counts.get(outcome, 0) + count

    def step() -> None:
        time.sleep(STEP_S)
        drain()

    async def api(call: Any) -> Any:
        async with open_async_database(database) as db:
            return await call(db)

    try:
        # The job, as FLorist's UI creates it: no uuids yet.
        job = Job(
            model="MNIST",
            server_address="localhost:8080",
            server_config=json.dumps({"n_server_rounds": ROUNDS}),
            config_parser="BASIC",
            redis_host=host,
            redis_port=port,
            clients_info=[
                ClientInfo(
                    client="MNIST",
                    service_address=f"localhost:800{i}",
                    data_path=f"data/{i}",
                    redis_host=host,
                    redis_port=port,
                )
                for i in range(CLIENTS)
            ],
        )
        asyncio.run(api(job.create))
        asyncio.run(api(lambda db: job.set_status(JobStatus.IN_PROGRESS, db)))

        # launch_local_server: the server reports fit_start right away, by its uuid.
        server_uuid = str(uuid.uuid4())
        server = StreamMetricsReporter(host=job.redis_host, port=job.redis_port, run_id=server_uuid)
        reporters.append(server)
        server.initialize(id="server-name-hash")
        server.report({"fit_start": "2024-11-20 14:00:00.100000", "host_type": "server"})
        wait_for_metric(client, server_uuid, "fit_start")
        drain()  # the worker sees the event before any job names that uuid

        # The clients, one HTTP call each; each reports as soon as it is set up.
        client_uuids: list[str] = []
        clients: list[StreamMetricsReporter] = []
        for info in job.clients_info or []:
            step()
            client_uuid = str(uuid.uuid4())
            reporter = StreamMetricsReporter(
                host=info.redis_host, port=info.redis_port, run_id=client_uuid
            )
            reporters.append(reporter)
            reporter.initialize(id="client-name", name="client-name")
            reporter.report({"host_type": "client", "initialized": "2024-11-20 14:00:05"})
            client_uuids.append(client_uuid)
            clients.append(reporter)
        step()

        # Only now does the route store the uuids.
        asyncio.run(api(lambda db: job.set_uuids(server_uuid, client_uuids, db)))
        step()

        for r in range(1, ROUNDS + 1):
            server.report({"fit_round_start": f"round {r}"}, r)
            for index, reporter in enumerate(clients):
                reporter.report({"fit_round_metrics": {"acc": 0.5 + index}, "round": r}, r)
                reporter.report({"fit_step_losses": {"l": 0.1}}, r, 1, 3)
            server.report({"fit_round_end": f"round {r}"}, r)
            step()
        server.report({"fit_end": "2024-11-20 14:01:00", "num_rounds": ROUNDS})
        for reporter in clients:
            reporter.report({"shutdown": "2024-11-20 14:01:01"})
            reporter.shutdown()
        server.report({"shutdown": "2024-11-20 14:01:02"})
        server.shutdown()

        deadline = time.monotonic() + 20
        while True:
            step()
            pending = client.xpending(stream, "florist-worker")["pending"]
            document = database[JOB_COLLECTION_NAME].find_one({"_id": job.id})
            assert document is not None
            done = document["status"] == "FINISHED_SUCCESSFULLY" and pending == 0
            if done or time.monotonic() > deadline:
                break

        assert not any(reporter.pending for reporter in reporters)
        dead = client.xlen(f"{stream}:dead") if client.exists(f"{stream}:dead") else 0
        assert (pending, dead) == (0, 0), counts
        assert document["status"] == "FINISHED_SUCCESSFULLY", counts
        assert document["server_uuid"] == server_uuid
        assert json.loads(document["server_metrics"]) == server.metrics
        stored = {info["uuid"]: info["metrics"] for info in document["clients_info"]}
        assert set(stored) == set(client_uuids)
        for reporter in clients:
            assert json.loads(stored[reporter.run_id or ""]) == reporter.metrics
        assert Job(**document).status is JobStatus.FINISHED_SUCCESSFULLY
        assert "dead" not in " ".join(counts), counts
    finally:
        worker.stop()
        for reporter in reporters:
            reporter.publisher.close()
        keys = [reporter.run_id for reporter in reporters if reporter.run_id]
        client.delete(stream, f"{stream}:dead", *keys)
        client.close()
