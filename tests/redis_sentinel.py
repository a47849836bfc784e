"""A private Redis Sentinel setup for tests: a primary, a replica and three sentinels.

Five processes on free loopback ports: two ``redis-server`` (the replica follows the
primary) and three ``redis-server <config> --sentinel`` that monitor the primary under
:data:`SERVICE` with a quorum of two. Each sentinel has its own config file in a
directory of its own (a sentinel rewrites it). ``down-after-milliseconds`` and
``failover-timeout`` are short, so a failover, forced (``SENTINEL FAILOVER``) or after a
``kill -9`` of the primary, is over in a few seconds. Optionally the data nodes require
a password (given in the URL) and the sentinels another one. Every process is killed by
:meth:`LocalSentinel.stop`.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.redis_server import free_port

SERVICE = "florist-primary"
SENTINELS = 3
QUORUM = 2


@dataclass
class Node:
    """One redis-server process, a data node or a sentinel."""

    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL, as ``kill -9`` does."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@dataclass
class LocalSentinel:
    """Start, inspect and fail over a primary, a replica and three sentinels."""

    directory: Path
    down_after_ms: int = 1000
    failover_timeout_ms: int = 4000
    password: str | None = None  # of the data nodes (requirepass, masterauth)
    sentinel_password: str | None = None  # of the sentinels (requirepass)
    data_nodes: list[Node] = field(default_factory=list, init=False)  # primary first, at start
    sentinels: list[Node] = field(default_factory=list, init=False)

    def url(self, scheme: str = "redis+sentinel", db: int = 0) -> str:
        """The Sentinel URL of the service, with the data nodes' password if any."""
        auth = f":{self.password}@" if self.password else ""
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in self.sentinels)
        return f"{scheme}://{auth}{hosts}/{SERVICE}/{db}"

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            raise RuntimeError("redis-server is not installed (.ci/run installs it)")
        ports: set[int] = set()
        while len(ports) < 2 + SENTINELS:
            ports.add(free_port())
        primary_port, replica_port, *sentinel_ports = sorted(ports)
        self.data_nodes.append(self._data_node(executable, "primary", primary_port, None))
        self.data_nodes.append(self._data_node(executable, "replica", replica_port, primary_port))
        for number, port in enumerate(sentinel_ports):
            self.sentinels.append(self._sentinel(executable, number, port, primary_port))
        self.wait_until_watched()

    def stop(self) -> None:
        for node in [*self.sentinels, *self.data_nodes]:
            node.kill()

    def __enter__(self) -> LocalSentinel:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _data_node(self, executable: str, name: str, port: int, follows: int | None) -> Node:
        directory = self.directory / name
        directory.mkdir(parents=True, exist_ok=True)
        command = [executable, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory)]
        command += ["--save", "", "--appendonly", "no", "--logfile", str(directory / "redis.log")]
        if self.password:
            command += ["--requirepass", self.password, "--masterauth", self.password]
        if follows is not None:
            command += ["--replicaof", "127.0.0.1", str(follows)]
        node = Node(port, directory, subprocess.Popen(command, stdout=subprocess.DEVNULL))
        _wait(lambda: _answers(self.data_client(node)), 10, f"redis-server on {port} to start")
        return node

    def _sentinel(self, executable: str, number: int, port: int, primary_port: int) -> Node:
        directory = self.directory / f"sentinel-{number}"
        directory.mkdir(parents=True, exist_ok=True)
        lines = [
            f"port {port}",
            "bind 127.0.0.1",
            f"dir {directory}",
            f"logfile {directory / 'sentinel.log'}",
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary_port} {QUORUM}",
            f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}",
            f"sentinel failover-timeout {SERVICE} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {SERVICE} 1",
        ]
        if self.password:
            lines.append(f"sentinel auth-pass {SERVICE} {self.password}")
        if self.sentinel_password:
            lines.append(f"requirepass {self.sentinel_password}")
            lines.append(f"sentinel sentinel-pass {self.sentinel_password}")
        config = directory / "sentinel.conf"
        config.write_text("\n".join(lines) + "\n")
        command = [executable, str(config), "--sentinel"]
        node = Node(port, directory, subprocess.Popen(command, stdout=subprocess.DEVNULL))
        _wait(lambda: _answers(self.sentinel_client(node)), 10, f"sentinel on {port} to start")
        return node

    # -- clients --------------------------------------------------------------------

    def data_client(self, node: Node, timeout_s: float = 2.0) -> redis.Redis:
        return redis.Redis(port=node.port, password=self.password, socket_timeout=timeout_s)

    def sentinel_client(self, node: Node, timeout_s: float = 2.0) -> redis.Redis:
        return redis.Redis(
            port=node.port, password=self.sentinel_password, socket_timeout=timeout_s
        )

    # -- state ----------------------------------------------------------------------

    def primary_port(self) -> int | None:
        """The primary's port if every running sentinel names the same one, else None."""
        named = set()
        for node in self.sentinels:
            if not node.running:
                continue
            client = self.sentinel_client(node)
            try:
                address = client.sentinel_get_master_addr_by_name(SERVICE)
            except redis.RedisError:
                return None
            finally:
                client.close()
            named.add(int(address[1]) if address else None)
        return named.pop() if len(named) == 1 else None

    def primary(self) -> Node:
        """The data node every sentinel names as the primary now."""
        port = self.primary_port()
        if port is None:
            raise RuntimeError("the sentinels do not agree on a primary")
        return next(node for node in self.data_nodes if node.port == port)

    def replica(self) -> Node:
        """The data node that is not the primary now."""
        primary = self.primary()
        return next(node for node in self.data_nodes if node is not primary)

    def role(self, node: Node) -> str | None:
        client = self.data_client(node)
        try:
            return str(client.info("replication")["role"])
        except redis.RedisError:
            return None
        finally:
            client.close()

    def wait_until_watched(self, timeout_s: float = 30.0) -> None:
        """Until every sentinel knows the primary, its replica (in sync) and the two other
        sentinels: only then can a failover be agreed."""

        def ready() -> bool:
            for node in self.sentinels:
                client = self.sentinel_client(node)
                try:
                    state = client.sentinel_master(SERVICE)
                except redis.RedisError:
                    return False
                finally:
                    client.close()
                if state["num-other-sentinels"] < SENTINELS - 1 or state["num-slaves"] < 1:
                    return False
            return self.primary_port() is not None and self._replica_in_sync()

        _wait(ready, timeout_s, "the sentinels to know the primary, the replica and each other")

    def _replica_in_sync(self) -> bool:
        client = self.data_client(self.replica())
        try:
            return client.info("replication").get("master_link_status") == "up"
        except redis.RedisError:
            return False
        finally:
            client.close()

    def wait_replicated(self, timeout_s: float = 10.0) -> None:
        """Until the replica has every write the primary has."""
        source, copy = self.data_client(self.primary()), self.data_client(self.replica())

        def caught_up() -> bool:
            wanted = int(source.info("replication")["master_repl_offset"])
            return int(copy.info("replication")["slave_repl_offset"]) >= wanted

        try:
            _wait(caught_up, timeout_s, "the replica to catch up with the primary")
        finally:
            source.close()
            copy.close()

    # -- failovers ------------------------------------------------------------------

    def force_failover(self) -> None:
        """``SENTINEL FAILOVER``, asked of one sentinel (the others follow it)."""
        client = self.sentinel_client(self.sentinels[0])
        try:
            client.sentinel_failover(SERVICE)
        finally:
            client.close()

    def wait_failed_over(self, old_primary: Node, timeout_s: float = 30.0) -> Node:
        """Until every running sentinel names another node, which says it is a primary;
        returns that node."""

        def promoted() -> bool:
            port = self.primary_port()
            return port not in (None, old_primary.port) and self.role(self.primary()) == "master"

        _wait(promoted, timeout_s, "the sentinels to promote the replica")
        return self.primary()


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
    finally:
        client.close()


def _wait(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)
