"""Against a real, private redis-server: restarts, lost state, long idle, SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from structlog.testing import capture_logs

from tests.redis_server import RedisServer
from tests.support import (
    DEAD,
    STREAM,
    WorkerThread,
    decoded_metrics,
    last_snapshots,
    pending_of,
    publish,
    settings,
    wait_until,
)
from worker.consumer import Worker


def _client(server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(server.url, socket_timeout=1, socket_connect_timeout=1)


def _worker(server, database, tmp_path, **overrides):
    values = {
        "block_ms": 300,
        "socket_timeout_s": 1.0,
        "heartbeat_file": tmp_path / "heartbeat",
        "backoff_max_s": 0.2,
    }
    values.update(overrides)
    return Worker(_client(server), database, settings(**values))


def _finished(database, job_id, entries):
    document = database["job"].find_one({"_id": job_id})
    if document is None or document.get("status") != "FINISHED_SUCCESSFULLY":
        return False
    server, clients = decoded_metrics(document)
    expected_server, expected_clients = last_snapshots(entries)
    return server == expected_server and all(
        m == expected_clients[c["uuid"]]
        for c, m in zip(document["clients_info"], clients, strict=True)
    )


def test_restart_with_aof_loses_nothing(
    private_redis, database, job_document, sample_entries, tmp_path
):
    database["job"].insert_one(job_document)
    producer = _client(private_redis)
    first, rest = sample_entries[:20], sample_entries[20:]
    with WorkerThread(_worker(private_redis, database, tmp_path)) as worker:
        publish(producer, first)
        wait_until(lambda: worker.counts.total() == 20, what="the first 20 events")
        private_redis.restart()  # kill -9, then start again from the AOF
        publish(producer, rest)
        wait_until(lambda: _finished(database, job_document["_id"], sample_entries), what="all")
    assert pending_of(producer) == 0
    assert producer.xlen(DEAD) == 0


def test_restart_without_persistence_recreates_the_group(
    tmp_path, database, job_document, sample_entries
):
    server = RedisServer(tmp_path / "volatile", appendonly=False)
    server.start()
    try:
        database["job"].insert_one(job_document)
        producer = _client(server)
        with capture_logs() as logs, WorkerThread(_worker(server, database, tmp_path)) as worker:
            publish(producer, sample_entries[:10])
            wait_until(lambda: worker.counts.total() == 10, what="the first 10 events")
            server.restart()  # the stream and its group are gone
            publish(producer, sample_entries[10:])
            wait_until(lambda: _finished(database, job_document["_id"], sample_entries), what="all")
        assert pending_of(producer) == 0
        recreated = [e for e in logs if e["event"] == "consumer group missing: recreating it"]
        assert len(recreated) == 1  # logged once
    finally:
        server.stop()


def test_idle_longer_than_the_socket_timeout(
    private_redis, database, job_document, sample_entries, tmp_path
):
    database["job"].insert_one(job_document)
    with capture_logs() as logs, WorkerThread(_worker(private_redis, database, tmp_path)) as worker:
        time.sleep(2.5)  # 2.5 x the client's 1 s socket timeout, with nothing to read
        publish(_client(private_redis), sample_entries)
        wait_until(lambda: _finished(database, job_document["_id"], sample_entries), what="all")
        # counted once settled, a moment after the last update
        wait_until(lambda: worker.counts.total() == len(sample_entries), what="the counts")
    assert [e for e in logs if e["log_level"] in ("error", "warning")] == []


def _florist_worker() -> str:
    path = Path(sys.executable).with_name("florist-worker")
    if not path.exists():
        pytest.fail(f"the florist-worker command is not installed next to {sys.executable}")
    return str(path)


def test_sigterm_finishes_the_batch_and_exits_zero(private_redis, tmp_path):
    client = _client(private_redis)
    total = 3000
    pipe = client.pipeline(transaction=False)
    for i in range(total):  # jobs that do not exist: each is dead-lettered (and acknowledged)
        pipe.xadd(
            STREAM, {"v": "1", "type": "job.status", "job_id": f"j{i}", "status": "IN_PROGRESS"}
        )
    pipe.execute()
    environment = {
        **os.environ,
        "FLORIST_REDIS_URL": private_redis.url,
        "FLORIST_MONGODB_URI": "memory://",
        "FLORIST_CONSUMER": "sigterm-test",
        "FLORIST_MAX_DELIVERIES": "1",
        "FLORIST_UNKNOWN_RETRY_S": "0",
        "FLORIST_BATCH_SIZE": "50",
        "FLORIST_BLOCK_MS": "500",
        "FLORIST_HEARTBEAT_FILE": str(tmp_path / "heartbeat"),
    }
    process = subprocess.Popen(
        [_florist_worker(), "run"], env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        wait_until(lambda: client.xlen(DEAD) > 0, timeout=20, what="the worker to start")
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    stderr = process.stderr.read().decode() if process.stderr else ""
    assert code == 0, stderr
    assert pending_of(client, "sigterm-test") == 0
    [group] = client.xinfo_groups(STREAM)
    delivered = int(group["entries-read"])
    assert client.xlen(DEAD) == delivered  # every delivered entry was settled, none lost
    assert '"stop requested"' in stderr and "SIGTERM" in stderr
    assert not (tmp_path / "heartbeat").exists()
