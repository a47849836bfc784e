"""Plain replication (a primary and a replica, no Cluster, no Sentinel): a worker whose
primary is demoted with ``REPLICAOF`` waits it out as an outage and never exits; it goes on
when that server is promoted back, or, when its URL names an address that moves to the new
primary (a DNS name, a floating IP; here a small TCP forwarder), against the new primary.
Nothing is lost and the document is the one a single worker makes on a plain Redis.
"""

from __future__ import annotations

import copy
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from pymongo.database import Database

from tests.failover import (
    OUTAGE_LOGGED,
    STREAM,
    Consuming,
    assert_consumed_once,
    failover_settings,
    reference_document,
)
from tests.redis_server import RedisServer, free_port
from tests.support import fixed_id
from tests.support import wait_until as wait
from worker.health import read_heartbeat

pytestmark = pytest.mark.redis_server


@pytest.fixture
def reference(
    real_redis: redis.Redis, job_document: dict[str, Any], sample_entries: list[dict[str, str]]
) -> dict[str, Any]:
    return reference_document(real_redis, job_document, sample_entries)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer]]:
    """A primary and its replica, in sync."""
    primary, replica = RedisServer(tmp_path / "a"), RedisServer(tmp_path / "b")
    primary.start()
    replica.start()
    try:
        make_replica(replica, of=primary)
        yield primary, replica
    finally:
        primary.stop()
        replica.stop()


def client_of(server: RedisServer) -> redis.Redis:
    return redis.Redis(port=server.port, socket_timeout=5)


def make_replica(server: RedisServer, *, of: RedisServer) -> None:
    """``REPLICAOF`` and wait until the link is up and the replica has all of it."""
    client, source = client_of(server), client_of(of)
    try:
        client.replicaof("127.0.0.1", of.port)

        def in_sync() -> bool:
            info = client.info("replication")
            wanted = int(source.info("replication")["master_repl_offset"])
            return (
                info.get("master_link_status") == "up"
                and int(info.get("slave_repl_offset", -1)) >= wanted
            )

        wait(in_sync, 20, f"{server.port} in sync with {of.port}")
    finally:
        client.close()
        source.close()


def make_primary(server: RedisServer) -> None:
    client = client_of(server)
    try:
        client.replicaof("no", "one")
    finally:
        client.close()


def swap(primary: RedisServer, replica: RedisServer) -> None:
    """The failover an operator (or a script) runs: promote the replica, then demote the
    old primary to a replica of it (``REPLICAOF host port``)."""
    make_primary(replica)
    make_replica(primary, of=replica)


def publish(server: RedisServer, entries: list[dict[str, str]], start: int, stop: int) -> None:
    client = client_of(server)
    try:
        for index in range(start, min(stop, len(entries))):
            client.xadd(STREAM, entries[index], id=fixed_id(index))  # type: ignore[arg-type]
    finally:
        client.close()


def blocked_on(server: RedisServer) -> bool:
    client = client_of(server)
    try:
        return int(client.info("clients")["blocked_clients"]) >= 1
    finally:
        client.close()


def waiting_out_an_outage(run: Consuming) -> bool:
    """The worker's heartbeat says Redis is down (it beats during an outage)."""
    beat = read_heartbeat(run.settings.heartbeat_file)
    return beat is not None and not beat.redis_ok


def test_a_demoted_primary_is_waited_out_until_it_is_promoted_back(
    pair, tmp_path, database: Database[Any], job_document, sample_entries, reference
):
    primary, replica = pair
    database["job"].insert_one(copy.deepcopy(job_document))
    third = len(sample_entries) // 3
    settings = failover_settings(primary.url, tmp_path, heartbeat_interval_s=0.2)
    with Consuming(settings, database) as run:
        publish(primary, sample_entries, 0, third)
        run.wait_settled([fixed_id(i) for i in range(third)], "the first entries")
        wait(lambda: blocked_on(primary), 10, "the worker blocked in XREADGROUP")
        make_replica(replica, of=primary)  # the worker's acknowledgements are there too

        swap(primary, replica)  # the worker's server is now a replica: UNBLOCKED, READONLY
        publish(replica, sample_entries, third, 2 * third)  # producers follow the primary
        wait(lambda: waiting_out_an_outage(run), 20, "the worker waiting out the outage")
        make_replica(primary, of=replica)  # it has the new entries, and still refuses
        assert run.thread.is_alive() and not run.failures

        began = time.monotonic()
        swap(replica, primary)  # back to how it was
        publish(primary, sample_entries, 2 * third, len(sample_entries))
        ids = [fixed_id(i) for i in range(len(sample_entries))]
        run.wait_settled(ids, "every entry to be settled")
        print(f"\npromoted back: drained {time.monotonic() - began:.1f} s after")
        assert_consumed_once(run, ids, database, reference)
        errors = {entry["error"][:40] for entry in run.logs if entry["event"] == OUTAGE_LOGGED}
    assert any(error.startswith(("UNBLOCKED", "You can't write")) for error in errors), errors


class Forwarder:
    """A TCP address that can be moved from one server to another, as a DNS name or a
    floating IP is moved to a new primary (connections to the old one are cut)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def move_to(self, target: int) -> None:
        with self._lock:
            self.target = target
            for connection in self._open:
                connection.close()
            self._open.clear()

    def close(self) -> None:
        self._listener.close()
        self.move_to(self.target)

    def _accept(self) -> None:
        while True:
            try:
                incoming, _address = self._listener.accept()
            except OSError:
                return
            with self._lock:
                outgoing = socket.create_connection(("127.0.0.1", self.target))
                self._open += [incoming, outgoing]
            for source, sink in ((incoming, outgoing), (outgoing, incoming)):
                threading.Thread(target=_pipe, args=(source, sink), daemon=True).start()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        source.close()
        sink.close()


def test_a_worker_whose_address_moves_to_the_new_primary_goes_on_there(
    pair, tmp_path, database: Database[Any], job_document, sample_entries, reference
):
    primary, replica = pair
    database["job"].insert_one(copy.deepcopy(job_document))
    third = len(sample_entries) // 3
    address = Forwarder(primary.port)
    try:
        settings = failover_settings(address.url, tmp_path, heartbeat_interval_s=0.2)
        with Consuming(settings, database) as run:
            publish(primary, sample_entries, 0, third)
            run.wait_settled([fixed_id(i) for i in range(third)], "the first entries")
            wait(lambda: blocked_on(primary), 10, "the worker blocked in XREADGROUP")
            make_replica(replica, of=primary)

            swap(primary, replica)
            publish(replica, sample_entries, third, 2 * third)
            wait(lambda: waiting_out_an_outage(run), 20, "the worker waiting out the outage")
            began = time.monotonic()
            address.move_to(replica.port)  # the name now points at the new primary
            publish(replica, sample_entries, 2 * third, len(sample_entries))
            ids = [fixed_id(i) for i in range(len(sample_entries))]
            run.wait_settled(ids, "every entry to be settled")
            print(f"\naddress moved: drained {time.monotonic() - began:.1f} s after")
            assert_consumed_once(run, ids, database, reference)
    finally:
        address.close()
