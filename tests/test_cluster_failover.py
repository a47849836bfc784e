"""Failovers while the worker consumes, on a private Redis Cluster: a ``kill -9`` of the
primary holding the stream's slot, a manual ``CLUSTER FAILOVER``, a ``CLUSTER FAILOVER
FORCE``, several failovers in a row, and ``florist-worker run`` itself through a manual
failover. Each time the worker carries on without a restart, with nothing lost, nothing
applied twice, nothing dead-lettered, and the job document equal to the one a single
worker makes on a plain Redis.

Each test has a cluster of its own (it breaks it) with a 1 s node timeout, so a replica
takes over a killed primary in about two seconds. The figures the tests print (run with
``-s``) are the ones in docs/redis-ha.md.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from pymongo.database import Database
from redis.exceptions import RedisClusterException

from tests.failover import (
    DEAD,
    GROUP,
    OUTAGE_LOGGED,
    STREAM,
    Consuming,
    assert_consumed_once,
    failover_settings,
    reference_document,
)
from tests.redis_cluster import ClusterNode, LocalCluster
from tests.support import fixed_id
from tests.support import wait_until as wait

pytestmark = pytest.mark.redis_cluster


@pytest.fixture
def reference(
    real_redis: redis.Redis, job_document: dict[str, Any], sample_entries: list[dict[str, str]]
) -> dict[str, Any]:
    document = reference_document(real_redis, job_document, sample_entries)
    assert document["status"] == "FINISHED_SUCCESSFULLY"
    return document


class Producer:
    """Publishes the sample entries, with the reference run's IDs, through failovers (a
    publish that fails while the cluster changes is tried again)."""

    def __init__(self, cluster: LocalCluster, entries: list[dict[str, str]]) -> None:
        self.client = redis.RedisCluster.from_url(cluster.url, socket_timeout=2)
        self.entries = entries
        self.ids: list[str] = []

    def publish(self, count: int) -> None:
        for _ in range(min(count, len(self.entries) - len(self.ids))):
            entry_id = fixed_id(len(self.ids))
            self._add(entry_id, self.entries[len(self.ids)])
            self.ids.append(entry_id)

    def publish_rest(self) -> None:
        self.publish(len(self.entries))

    def _add(self, entry_id: str, fields: dict[str, str]) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                self.client.xadd(STREAM, fields, id=entry_id)  # type: ignore[arg-type]
                return
            except (redis.RedisError, RedisClusterException) as error:
                if "equal or smaller" in str(error):
                    return  # added by an attempt whose reply was lost
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def close(self) -> None:
        self.client.close()


@dataclass(frozen=True)
class Disruption:
    """What a test does to the stream's primary and its replica while the worker runs;
    ``idle``: once the worker has settled everything and waits in a blocking XREADGROUP
    on that primary (where a demotion answers UNBLOCKED), else while it applies a batch."""

    act: Callable[[ClusterNode, ClusterNode], None]
    idle: bool


def consume_through(
    cluster: LocalCluster,
    database: Database[Any],
    tmp_path: Path,
    job_document: dict[str, Any],
    sample_entries: list[dict[str, str]],
    reference: dict[str, Any],
    disruptions: Sequence[Disruption],
) -> list[float]:
    """Publish, and while the worker consumes, run each disruption on the stream's primary
    and its replica; publish the rest after each. Asserts :func:`assert_consumed_once`;
    returns, for each disruption, the seconds from its start until the entries published
    so far were all settled."""
    database["job"].insert_one(copy.deepcopy(job_document))
    producer = Producer(cluster, sample_entries)
    chunk = len(sample_entries) // (len(disruptions) + 1)
    drained: list[float] = []
    try:
        worker_settings = failover_settings(cluster.url, tmp_path, redis_cluster=True)
        with Consuming(worker_settings, database) as run:
            for disrupt in disruptions:
                producer.publish(chunk)
                primary = cluster.primary_for(STREAM)
                if disrupt.idle:
                    run.wait_settled(producer.ids, "the entries published so far to be settled")
                    wait(lambda: _blocked(primary), 10, "the worker blocked in XREADGROUP")  # noqa: B023
                else:
                    settled_before = len(run.settled.ids())
                    wait(
                        lambda: len(run.settled.ids()) >= settled_before + 4,  # noqa: B023
                        20,
                        "the worker to be under way",
                    )
                cluster.wait_replicated(primary)  # what the producer wrote survives
                began = time.monotonic()
                disrupt.act(primary, cluster.replica_of(primary))
                producer.publish(chunk)
                run.wait_settled(producer.ids, "the entries published so far to be settled")
                drained.append(time.monotonic() - began)
                cluster.wait_until_healthy()
            producer.publish_rest()
            run.wait_settled(producer.ids, "every entry to be settled")
            assert_consumed_once(run, producer.ids, database, reference)
    finally:
        producer.close()
    return drained


def test_a_killed_primary_is_waited_out(
    tmp_path, database, job_document, sample_entries, reference
):
    promoted: list[float] = []
    with LocalCluster(tmp_path / "cluster") as cluster:

        def kill(primary: ClusterNode, replica: ClusterNode) -> None:
            killed_at = time.monotonic()
            cluster.kill(primary)
            cluster.wait_promoted(replica)
            promoted.append(time.monotonic() - killed_at)

        drained = consume_through(
            cluster,
            database,
            tmp_path,
            job_document,
            sample_entries,
            reference,
            [Disruption(kill, idle=False)],
        )
    print(f"\nkill -9: replica promoted in {promoted[0]:.1f} s, drained {drained[0]:.1f} s after")
    assert promoted[0] < 15


def _manual(
    cluster: LocalCluster, *, force: bool = False
) -> Callable[[ClusterNode, ClusterNode], None]:
    def failover(primary: ClusterNode, replica: ClusterNode) -> None:
        cluster.failover(replica, force=force)
        # Forced, the old primary takes writes until it learns of the promotion, and they
        # are lost then: a producer that publishes in that window loses entries (Redis's
        # own limit, docs/redis-ha.md). The test publishes after it.
        cluster.wait_demoted(primary)

    return failover


@pytest.mark.parametrize("idle", [True, False], ids=["blocked-in-xreadgroup", "mid-batch"])
def test_a_manual_failover_is_waited_out(
    tmp_path, database, job_document, sample_entries, reference, idle
):
    with LocalCluster(tmp_path / "cluster") as cluster:
        drained = consume_through(
            cluster,
            database,
            tmp_path,
            job_document,
            sample_entries,
            reference,
            [Disruption(_manual(cluster), idle=idle)],
        )
    print(
        f"\nCLUSTER FAILOVER ({'idle' if idle else 'mid-batch'}): drained {drained[0]:.1f} s after"
    )


def test_a_forced_failover_is_waited_out(
    tmp_path, database, job_document, sample_entries, reference
):
    with LocalCluster(tmp_path / "cluster") as cluster:
        drained = consume_through(
            cluster,
            database,
            tmp_path,
            job_document,
            sample_entries,
            reference,
            [Disruption(_manual(cluster, force=True), idle=True)],
        )
    print(f"\nCLUSTER FAILOVER FORCE: drained {drained[0]:.1f} s after it began")


def test_repeated_failovers_are_each_waited_out(
    tmp_path, database, job_document, sample_entries, reference
):
    with LocalCluster(tmp_path / "cluster") as cluster:
        manual, forced = _manual(cluster), _manual(cluster, force=True)
        drained = consume_through(
            cluster,
            database,
            tmp_path,
            job_document,
            sample_entries,
            reference,
            [
                Disruption(manual, idle=True),
                Disruption(forced, idle=False),
                Disruption(manual, idle=False),
                Disruption(forced, idle=True),
            ],
        )
    print("\nfour failovers in a row: drained " + ", ".join(f"{s:.1f} s" for s in drained))


# -- the real entry point --------------------------------------------------------------------


def _dead_origins(client: Any) -> Counter[str]:
    return Counter(fields[b"origin_id"].decode() for _id, fields in client.xrange(DEAD, "-", "+"))


def test_the_run_command_survives_a_manual_failover(tmp_path: Path) -> None:
    """The bug report: ``florist-worker run`` exited 1 with ``UNBLOCKED force unblock from
    blocking operation`` at a manual failover. Invalid entries are dead-lettered at once
    (its memory:// database has no jobs), so each one settled shows in Redis."""
    with LocalCluster(tmp_path / "cluster") as cluster:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("FLORIST_")}
        environment |= {
            "FLORIST_REDIS_URL": cluster.url,
            "FLORIST_REDIS_CLUSTER": "true",
            "FLORIST_STREAM": STREAM,
            "FLORIST_MONGODB_URI": "memory://",
            "FLORIST_BLOCK_MS": "200",
            "FLORIST_SOCKET_TIMEOUT_S": "1",
            "FLORIST_BACKOFF_INITIAL_S": "0.05",
            "FLORIST_BACKOFF_MAX_S": "0.5",
            "FLORIST_HEARTBEAT_FILE": str(tmp_path / "heartbeat"),
            "FLORIST_LOG_FORMAT": "json",
        }
        log_file = tmp_path / "worker.log"
        with log_file.open("w") as log_out:
            process = subprocess.Popen(
                [str(Path(sys.executable).with_name("florist-worker")), "run"],
                stdout=subprocess.DEVNULL,
                stderr=log_out,
                env=environment,
            )
        client = redis.RedisCluster.from_url(cluster.url, socket_timeout=2)
        invalid = {"v": "1", "type": "job.status", "job_id": "j", "status": "BOGUS"}
        try:
            first = [client.xadd(STREAM, invalid).decode() for _ in range(5)]  # type: ignore[arg-type, union-attr]
            wait(lambda: set(_dead_origins(client)) >= set(first), 30, "the worker under way")
            primary = cluster.primary_for(STREAM)
            replica = cluster.replica_of(primary)
            wait(lambda: _blocked(primary), 10, "the worker blocked in XREADGROUP")
            cluster.wait_replicated(primary)
            cluster.failover(replica)
            after = [_add_retrying(client, invalid) for _ in range(5)]
            wait(
                lambda: (
                    set(_dead_origins(client)) >= set(first + after) or process.poll() is not None
                ),
                30,
                "the entries published after the failover to be settled",
            )
            assert process.poll() is None, log_file.read_text()[-3000:]
            assert int(client.xpending(STREAM, GROUP)["pending"]) == 0
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            client.close()
        stderr = log_file.read_text()
    assert code == 0, stderr[-3000:]
    events = [json.loads(line)["event"] for line in stderr.splitlines() if line.startswith("{")]
    assert OUTAGE_LOGGED in events and "outage over" in events, Counter(events)
    assert "Traceback" not in stderr


def _blocked(node: ClusterNode) -> bool:
    client = node.client()
    try:
        return int(client.info("clients")["blocked_clients"]) >= 1
    finally:
        client.close()


def _add_retrying(client: redis.RedisCluster, fields: dict[str, str]) -> str:
    for _attempt in range(50):
        try:
            return client.xadd(STREAM, fields).decode()  # type: ignore[arg-type, union-attr, no-any-return]
        except (redis.RedisError, RedisClusterException):
            time.sleep(0.1)
    raise AssertionError("the producer did not reach the promoted primary")
