"""A private Redis Cluster for tests: three primaries with one replica each, on loopback.

Six ``redis-server --cluster-enabled yes`` processes on free ports (each with an explicit
``--cluster-port`` for its bus, so no port needs to be free at +10000), joined with
``redis-cli --cluster create ... --cluster-replicas 1 --cluster-yes``. The node timeout
is short (1 s by default) so that a replica takes over a stopped primary in a few
seconds. Nothing is persisted; every process is killed by :meth:`RedisCluster.stop`.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
from redis.crc import key_slot

from tests.redis_server import free_port

PRIMARIES = 3


@dataclass
class ClusterNode:
    """One redis-server of the cluster."""

    port: int
    bus_port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self, timeout_s: float = 2.0) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=timeout_s)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class LocalCluster:
    """Start, inspect and break a six-node cluster in ``directory``."""

    directory: Path
    node_timeout_ms: int = 1000
    nodes: list[ClusterNode] = field(default_factory=list)
    _last_failover: float = 0.0

    @property
    def url(self) -> str:
        """A URL of one running node: the client discovers the others from it."""
        node = next(node for node in self.nodes if node.running)
        return f"redis://{node.address}/0"

    def start(self) -> None:
        executable = shutil.which("redis-server")
        cli = shutil.which("redis-cli")
        if executable is None or cli is None:
            raise RuntimeError("redis-server and redis-cli are needed (.ci/run installs them)")
        ports: set[int] = set()
        while len(ports) < 4 * PRIMARIES:
            ports.add(free_port())
        ordered = sorted(ports)
        for index in range(2 * PRIMARIES):
            directory = self.directory / f"node-{index}"
            directory.mkdir(parents=True, exist_ok=True)
            node = ClusterNode(ordered[2 * index], ordered[2 * index + 1], directory)
            node.process = subprocess.Popen(
                [
                    executable,
                    "--port",
                    str(node.port),
                    "--cluster-port",
                    str(node.bus_port),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    str(directory),
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    str(self.node_timeout_ms),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--logfile",
                    str(directory / "redis.log"),
                ],
                stdout=subprocess.DEVNULL,
            )
            self.nodes.append(node)
        for node in self.nodes:
            _wait_for_ping(node)
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(node.address for node in self.nodes),
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.wait_until_healthy()

    def stop(self) -> None:
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.kill()
                node.process.wait(timeout=10)

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # -- topology -------------------------------------------------------------------

    def wait_until_healthy(self, timeout_s: float = 30.0) -> None:
        """Every running node says the cluster is ok, knows the running nodes and covers
        all slots, and every replica is in sync with its primary."""
        deadline = time.monotonic() + timeout_s
        while True:
            problem = self._problem()
            if problem is None:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the test cluster did not become healthy: {problem}")
            time.sleep(0.05)

    def _problem(self) -> str | None:
        running = [node for node in self.nodes if node.running]
        for node in running:
            client = node.client()
            try:
                info = client.cluster("info")
                replication = client.info("replication")
            except redis.RedisError as error:
                return f"{node.address}: {error}"
            finally:
                client.close()
            if info.get("cluster_state") != "ok" or int(info["cluster_slots_ok"]) != 16384:
                return f"{node.address}: {info.get('cluster_state')}"
            if replication.get("role") == "slave" and replication.get("master_link_status") != "up":
                return f"{node.address}: replica link down"
        return None

    def primary_for(self, key: str) -> ClusterNode:
        """The node that serves ``key``'s slot now (asked of a running node)."""
        slot = key_slot(key.encode())
        for node in self.nodes:
            if not node.running:
                continue
            client = node.client()
            try:
                ranges = client.execute_command("CLUSTER", "SLOTS")
            except redis.RedisError:
                continue
            finally:
                client.close()
            for start, end, primary, *_replicas in ranges:
                if start <= slot <= end:
                    port = int(primary[1])
                    return next(n for n in self.nodes if n.port == port)
        raise RuntimeError(f"no running node knows the slot of {key!r}")

    def replica_of(self, primary: ClusterNode) -> ClusterNode:
        client = primary.client()
        try:
            node_id = client.execute_command("CLUSTER", "MYID")
            node_id = node_id.decode() if isinstance(node_id, bytes) else node_id
        finally:
            client.close()
        for node in self.nodes:
            if node is primary or not node.running:
                continue
            client = node.client()
            try:
                info = client.info("replication")
                myself = _myself(client)
            finally:
                client.close()
            if info.get("role") == "slave" and myself.get("master") == node_id:
                return node
        raise RuntimeError(f"{primary.address} has no replica")

    def wait_replicated(self, primary: ClusterNode, timeout_s: float = 10.0) -> None:
        """Until the primary's replica has every write the primary has."""
        replica = self.replica_of(primary)
        deadline = time.monotonic() + timeout_s
        while True:
            source, copy = primary.client(), replica.client()
            try:
                wanted = int(source.info("replication")["master_repl_offset"])
                have = int(copy.info("replication")["slave_repl_offset"])
            finally:
                source.close()
                copy.close()
            if have >= wanted:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"replica {replica.address} stayed behind ({have} < {wanted})")
            time.sleep(0.02)

    def kill(self, node: ClusterNode) -> None:
        """Stop a node the hard way (SIGKILL): its replica is to take over."""
        assert node.process is not None
        node.process.kill()
        node.process.wait(timeout=10)

    def failover(self, replica: ClusterNode, *, force: bool = False) -> None:
        """A manual failover, as an operator runs it on a replica: ``CLUSTER FAILOVER`` (its
        primary hands the slots over once the replica has caught up) or, with ``force``,
        ``CLUSTER FAILOVER FORCE`` (without asking the primary); until it is promoted.

        Not sooner than two node timeouts after the previous one: until then the primaries
        do not vote again for a replica of the same primary, and the failover would stall.
        """
        while time.monotonic() < self._last_failover + 2 * self.node_timeout_ms / 1000 + 0.5:
            time.sleep(0.05)
        client = replica.client()
        try:
            client.execute_command("CLUSTER", "FAILOVER", *(["FORCE"] if force else []))
        finally:
            client.close()
        self.wait_promoted(replica)
        self._last_failover = time.monotonic()

    def wait_demoted(self, node: ClusterNode, timeout_s: float = 20.0) -> None:
        """Until ``node`` (a primary that was failed over) knows it is a replica: until then
        it takes writes that are lost when it learns it (what FORCE risks)."""
        deadline = time.monotonic() + timeout_s
        while True:
            client = node.client()
            try:
                role = client.info("replication").get("role")
            except redis.RedisError:
                role = None
            finally:
                client.close()
            if role == "slave":
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{node.address} was not demoted (role {role})")
            time.sleep(0.02)

    def wait_promoted(self, node: ClusterNode, timeout_s: float = 20.0) -> None:
        """Until ``node`` (a replica) is a primary and the cluster is ok again."""
        deadline = time.monotonic() + timeout_s
        while True:
            client = node.client()
            try:
                role = client.info("replication").get("role")
                state = client.cluster("info").get("cluster_state")
            except redis.RedisError:
                role = state = None
            finally:
                client.close()
            if role == "master" and state == "ok":
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{node.address} was not promoted (role {role}, {state})")
            time.sleep(0.05)


def _myself(client: redis.Redis) -> dict[str, str]:
    """This node's line of CLUSTER NODES: its id and, for a replica, its primary's id."""
    text = client.execute_command("CLUSTER", "NODES")
    text = text.decode() if isinstance(text, bytes) else text
    for line in str(text).splitlines():
        parts = line.split()
        if "myself" in parts[2]:
            return {"id": parts[0], "master": parts[3]}
    raise RuntimeError("CLUSTER NODES has no 'myself' line")


def _wait_for_ping(node: ClusterNode, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    client = node.client(timeout_s=1.0)
    try:
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline or not node.running:
                    raise RuntimeError(f"redis-server on {node.port} did not start") from None
                time.sleep(0.02)
    finally:
        client.close()
