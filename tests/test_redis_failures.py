"""Redis failures classified as redis-py raises them (worker/redis_failures.py).

The replies below go through redis-py's own reply parser (``parse_error``, which the
hiredis parser calls too), so each object is the one a worker meets: a mapped class
whose message lost its code (``ReadOnlyError``) or a plain ``ResponseError`` that keeps
it (``UNBLOCKED ...``). The cluster client's exceptions are built as redis-py builds
them; the last tests provoke the errors on a real redis-server and classify those.
A worker fed each failover reply waits it out and goes on.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from pymongo.database import Database
from redis._parsers import BaseParser
from redis.backoff import NoBackoff
from redis.exceptions import (
    ClusterError,
    CrossSlotTransactionError,
    InvalidResponse,
    RedisClusterException,
    SlotNotCoveredError,
)
from redis.retry import Retry

from tests.redis_server import RedisServer
from tests.support import STREAM, make_worker, wait_until
from worker.cluster import ClusterUnavailable
from worker.errors import Misconfigured
from worker.health import read_heartbeat
from worker.redis_failures import RedisFailure, classify
from worker.store import StoreUnavailable

OUTAGE = RedisFailure.OUTAGE
GROUP_MISSING = RedisFailure.GROUP_MISSING
REFUSAL = RedisFailure.REFUSAL
MISCONFIGURED = RedisFailure.MISCONFIGURED


def reply(text: str) -> Exception:
    """The exception redis-py raises for the error reply ``-<text>``."""
    error = BaseParser.parse_error(text)
    assert isinstance(error, redis.RedisError)
    return error


# What Redis answers during a failover or another passing outage.
FAILOVER_REPLIES = {
    "blocked read on a demoted primary": "UNBLOCKED force unblock from blocking operation, "
    "instance state changed (master -> replica?)",
    "write to a replica": "READONLY You can't write against a read only replica.",
    "loading": "LOADING Redis is loading the dataset in memory",
    "replica without its primary": "MASTERDOWN Link with MASTER is down and "
    "replica-serve-stale-data is set to 'no'.",
    "cluster down": "CLUSTERDOWN The cluster is down",
    "slot not served": "CLUSTERDOWN Hash slot not served",
    "slot migrating": "TRYAGAIN Multiple keys request during rehashing of slot",
    "moved storm": "MOVED 3999 127.0.0.1:6381",
    "ask storm": "ASK 3999 127.0.0.1:6381",
    "busy script": "BUSY Redis is busy running a script. You can only call SCRIPT KILL or "
    "SHUTDOWN NOSAVE.",
    "busy module": "BUSY Redis is busy running a module command.",
    "replicas short": "NOREPLICAS Not enough good replicas to write.",
    "cannot persist": "MISCONF Redis is configured to save RDB snapshots, but it's currently "
    "unable to persist to disk.",
    "out of memory": "OOM command not allowed when used memory > 'maxmemory'.",
    "clients full": "ERR max number of clients reached",
    "older server's EXEC on a demoted primary": "ERR Transaction contains write commands but "
    "instance is now a read-only replica. EXEC aborted.",
    "proxy during a managed failover": "ERR failover in progress, retry later",
}

REPLIES = {
    **{name: (text, OUTAGE) for name, text in FAILOVER_REPLIES.items()},
    "group missing": (
        "NOGROUP No such key 'florist:events' or consumer group 'florist-worker' in "
        "XREADGROUP with GROUP option",
        GROUP_MISSING,
    ),
    "group destroyed under a blocked read": (
        "NOGROUP the consumer group this client was blocked on no longer exists",
        GROUP_MISSING,
    ),
    "stream deleted under a blocked read": (
        "UNBLOCKED the stream key no longer exists",
        GROUP_MISSING,
    ),
    "no stream for XINFO": ("ERR no such key", GROUP_MISSING),
    "command not in the ACL": (
        "NOPERM this user has no permissions to run the 'xautoclaim' command",
        REFUSAL,
    ),
    "key not in the ACL": (
        "NOPERM this user has no permissions to access one of the keys used as arguments",
        REFUSAL,
    ),
    "wrong password": ("WRONGPASS invalid username-password pair or user is disabled.", REFUSAL),
    "no password": ("NOAUTH Authentication required.", REFUSAL),
    "wrong password, Redis 5": ("ERR invalid password", REFUSAL),
    "key of another type": (
        "WRONGTYPE Operation against a key holding the wrong kind of value",
        MISCONFIGURED,
    ),
    "Redis too old": (
        "ERR unknown command 'XAUTOCLAIM', with args beginning with: 'florist:events' ",
        MISCONFIGURED,
    ),
    "cross-slot": ("CROSSSLOT Keys in request don't hash to the same slot", MISCONFIGURED),
    "AUTH with a user on Redis 5": (
        "ERR wrong number of arguments for 'auth' command",
        MISCONFIGURED,
    ),
    "transaction discarded": (
        "EXECABORT Transaction discarded because of previous errors.",
        MISCONFIGURED,
    ),
    "bad stream ID": (
        "ERR Invalid stream ID specified as stream command argument",
        MISCONFIGURED,
    ),
}


@pytest.mark.parametrize(("text", "expected"), REPLIES.values(), ids=REPLIES.keys())
def test_every_reply_is_classified_as_parsed_by_redis_py(text: str, expected: RedisFailure):
    assert classify(reply(text)) is expected


@pytest.mark.parametrize(("text", "expected"), REPLIES.values(), ids=REPLIES.keys())
def test_a_reply_to_a_pipelined_command_is_classified_as_the_reply_itself(
    text: str, expected: RedisFailure
):
    """redis-py prefixes the error of a command in a pipeline or MULTI/EXEC with the
    command ("Command # 1 (XACK ...) of pipeline caused error: NOREPLICAS ..."): the
    class is the reply's, whatever the command's arguments say."""
    error = reply(text)
    pipeline = redis.client.Pipeline(None, None, True, None)  # type: ignore[arg-type]
    pipeline.annotate_exception(error, 1, ("XACK", "s", "g", "1-0", "UNBLOCKED x READONLY"))
    assert str(error).startswith("Command # 1 (XACK")
    assert classify(error) is expected


def _cluster_error_caused_by(cause: Exception) -> RedisClusterException:
    try:
        try:
            raise cause
        except Exception as error:
            raise RedisClusterException(
                "Redis Cluster cannot be connected. Please provide at least one reachable "
                f"node: {error}"
            ) from error
    except RedisClusterException as raised:
        return raised


CLIENT_SIDE = {
    "connection refused": (
        redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused."),
        OUTAGE,
    ),
    "socket timeout": (redis.TimeoutError("Timeout reading from socket"), OUTAGE),
    "cluster client found no node": (ClusterUnavailable("Redis Cluster: no node"), OUTAGE),
    "redirected too often": (ClusterError("TTL exhausted."), OUTAGE),
    "slot not covered": (SlotNotCoveredError('Slot "4000" not covered by the cluster.'), OUTAGE),
    "no node reachable": (
        _cluster_error_caused_by(redis.ConnectionError("Connection refused")),
        OUTAGE,
    ),
    "slots not all covered": (
        RedisClusterException(
            "All slots are not covered after query all startup_nodes. 10923 of 16384 covered..."
        ),
        OUTAGE,
    ),
    "nodes disagree": (
        RedisClusterException("startup_nodes could not agree on a valid slots cache: ..."),
        OUTAGE,
    ),
    "cluster refusing the password": (
        _cluster_error_caused_by(reply("WRONGPASS invalid username-password pair")),
        REFUSAL,
    ),
    "cluster mode off": (
        RedisClusterException("Cluster mode is not enabled on this node"),
        MISCONFIGURED,
    ),
    "cross-slot transaction": (
        CrossSlotTransactionError("all keys must be in the same slot"),
        MISCONFIGURED,
    ),
    "bad argument": (redis.DataError("Invalid input of type: 'NoneType'."), MISCONFIGURED),
    "not Redis at that port": (InvalidResponse("Protocol Error: H, b'TTP/1.1'"), MISCONFIGURED),
}


@pytest.mark.parametrize(("error", "expected"), CLIENT_SIDE.values(), ids=CLIENT_SIDE.keys())
def test_client_side_failures_are_classified(error: Exception, expected: RedisFailure):
    assert classify(error) is expected


@pytest.mark.parametrize(
    "error", [StoreUnavailable("MongoDB down"), ValueError("x"), OSError("disk")]
)
def test_other_failures_are_not_redis_failures(error: Exception):
    assert classify(error) is None


# -- a worker fed each failover reply ------------------------------------------------------


class FailingReads:
    """A client whose next reads raise ``error`` ``times`` times, then read for real."""

    def __init__(self, client: redis.Redis, error: Exception, times: int) -> None:
        self._client = client
        self._error = error
        self.left = times

    def xreadgroup(self, *args: Any, **kwargs: Any) -> Any:
        if self.left:
            self.left -= 1
            raise self._error
        return self._client.xreadgroup(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


JOB = "job-failover"


def _one_status_entry(client: Any, database: Database[Any]) -> None:
    database["job"].insert_one({"_id": JOB, "status": "NOT_STARTED"})
    client.xadd(STREAM, {"v": "1", "type": "job.status", "job_id": JOB, "status": "IN_PROGRESS"})


@pytest.mark.parametrize("text", FAILOVER_REPLIES.values(), ids=FAILOVER_REPLIES.keys())
def test_a_worker_waits_out_every_failover_reply(fake_redis, database, text: str):
    _one_status_entry(fake_redis, database)
    client = FailingReads(fake_redis, reply(text), times=3)
    assert make_worker(client, database).drain() == {"applied": 1}
    assert client.left == 0


def test_a_refusal_at_start_stops_the_worker_with_one_line(fake_redis, database):
    _one_status_entry(fake_redis, database)
    refused = reply("NOPERM this user has no permissions to run the 'xgroup' command")

    class Refusing(FailingReads):
        def xgroup_create(self, *args: Any, **kwargs: Any) -> Any:
            raise refused

    with pytest.raises(Misconfigured, match="no permissions to run") as raised:
        make_worker(Refusing(fake_redis, refused, 0), database).drain()
    assert "\n" not in str(raised.value) and "FLORIST_REDIS_URL" in str(raised.value)
    assert fake_redis.xlen(STREAM) == 1


def test_a_refusal_after_start_is_waited_out(fake_redis, database):
    _one_status_entry(fake_redis, database)
    client = FailingReads(fake_redis, reply("NOAUTH Authentication required."), times=0)
    worker = make_worker(client, database)
    assert worker.drain() == {"applied": 1}  # started: the group exists, one entry applied
    client.xadd(
        STREAM, {"v": "1", "type": "job.status", "job_id": JOB, "status": "FINISHED_WITH_ERROR"}
    )
    client.left = 3  # e.g. a promoted replica whose ACL file is not loaded yet
    assert worker.drain() == {"applied": 1}
    assert client.left == 0


def test_a_stream_deleted_under_a_read_is_recreated(fake_redis, database):
    _one_status_entry(fake_redis, database)
    client = FailingReads(fake_redis, reply("UNBLOCKED the stream key no longer exists"), 1)
    worker = make_worker(client, database)
    assert worker.drain() == {"applied": 1}
    assert client.left == 0


def test_an_unknown_redis_error_stops_the_worker_with_one_line(fake_redis, database):
    _one_status_entry(fake_redis, database)
    client = FailingReads(fake_redis, reply("WRONGTYPE Operation against a key"), times=1)
    with pytest.raises(Misconfigured, match="WRONGTYPE"):
        make_worker(client, database).drain()


# -- real ones, from a real redis-server ---------------------------------------------------


@pytest.fixture
def second_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "second")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _error_of(call: Callable[[], Any]) -> Exception:
    try:
        call()
    except Exception as error:  # noqa: BLE001 (the error is what the test looks at)
        return error
    raise AssertionError("no error raised")


def _blocked_read_error(client: redis.Redis, stream: str, then: Callable[[], Any]) -> Exception:
    """The error a blocked XREADGROUP on ``stream`` gets when ``then`` runs meanwhile."""
    client.xgroup_create(stream, "g", id="0", mkstream=True)
    reader = redis.Redis(port=client.connection_pool.connection_kwargs["port"], socket_timeout=20)
    errors: list[Exception] = []

    def read() -> None:
        errors.append(_error_of(lambda: reader.xreadgroup("g", "c", {stream: ">"}, block=15000)))

    thread = threading.Thread(target=read)
    thread.start()
    wait_until(lambda: int(client.info("clients")["blocked_clients"]) == 1, 10, "a blocked read")
    then()
    thread.join(timeout=20)
    reader.close()
    return errors[0]


@pytest.mark.redis_server
def test_real_failover_and_outage_errors_are_outages(private_redis, second_redis):
    client = redis.Redis(port=private_redis.port, socket_timeout=5)
    replica = redis.Redis(port=second_redis.port, socket_timeout=5)
    try:
        client.config_set("min-replicas-to-write", 1)
        no_replicas = _error_of(lambda: client.xadd("s", {"a": "1"}))
        client.config_set("min-replicas-to-write", 0)
        client.config_set("maxmemory", 1)
        out_of_memory = _error_of(lambda: client.xadd("s", {"a": "1"}))
        client.config_set("maxmemory", 0)
        demoted = _blocked_read_error(
            client, "blocked", lambda: client.replicaof("127.0.0.1", second_redis.port)
        )
        read_only = _error_of(lambda: client.xadd("s", {"a": "1"}))
        replica.config_set("replica-serve-stale-data", "no")
        replica.replicaof("127.0.0.1", 1)  # a primary that never answers
        master_down = _error_of(lambda: replica.get("x"))
    finally:
        client.close()
        replica.close()
    assert "UNBLOCKED" in str(demoted)
    found = {
        "NOREPLICAS": no_replicas,
        "OOM": out_of_memory,
        "UNBLOCKED": demoted,
        "READONLY": read_only,
        "MASTERDOWN": master_down,
    }
    assert {code: classify(error) for code, error in found.items()} == dict.fromkeys(found, OUTAGE)


ONCE: dict[str, Any] = {"retry": Retry(NoBackoff(), 0)}  # no retries of a refused AUTH


@pytest.mark.redis_server
def test_real_group_and_access_errors(private_redis):
    admin = redis.Redis(port=private_redis.port, socket_timeout=5)
    try:
        deleted = _blocked_read_error(admin, "deleted", lambda: admin.delete("deleted"))
        destroyed = _blocked_read_error(
            admin, "destroyed", lambda: admin.xgroup_destroy("destroyed", "g")
        )
        no_group = _error_of(lambda: admin.xreadgroup("nope", "c", {"s": ">"}))
        no_key = _error_of(lambda: admin.xinfo_stream("none"))
        admin.set("string", "v")
        wrong_type = _error_of(lambda: admin.xadd("string", {"a": "1"}))
        admin.acl_setuser("u", enabled=True, passwords=["+pw"], keys=["~s*"], commands=["+@all"])
        user = redis.Redis(port=private_redis.port, username="u", password="pw")
        no_permission = _error_of(lambda: user.xadd("other", {"a": "1"}))
        wrong_password = _error_of(
            lambda: redis.Redis(port=private_redis.port, username="u", password="x", **ONCE).ping()
        )
        admin.config_set("requirepass", "secret")
        no_auth = _error_of(lambda: redis.Redis(port=private_redis.port, **ONCE).ping())
        admin.config_set("requirepass", "")
    finally:
        admin.close()
    classes = {
        "UNBLOCKED stream deleted": classify(deleted),
        "NOGROUP group destroyed": classify(destroyed),
        "NOGROUP": classify(no_group),
        "no such key": classify(no_key),
        "WRONGTYPE": classify(wrong_type),
        "NOPERM": classify(no_permission),
        "WRONGPASS": classify(wrong_password),
        "NOAUTH": classify(no_auth),
    }
    assert classes == {
        "UNBLOCKED stream deleted": GROUP_MISSING,
        "NOGROUP group destroyed": GROUP_MISSING,
        "NOGROUP": GROUP_MISSING,
        "no such key": GROUP_MISSING,
        "WRONGTYPE": MISCONFIGURED,
        "NOPERM": REFUSAL,
        "WRONGPASS": REFUSAL,
        "NOAUTH": REFUSAL,
    }


def test_the_heartbeat_of_a_cluster_client_refused_says_redis_is_down(
    fake_redis, database, tmp_path
):
    """A cluster client's own exception (not a redis.RedisError) is a Redis failure for the
    heartbeat too: Redis is reported down, the loop is not ended."""
    refused = CLIENT_SIDE["cluster refusing the password"][0]

    class Refusing(FailingReads):
        def ping(self) -> Any:
            raise refused

    worker = make_worker(
        Refusing(fake_redis, refused, 0), database, heartbeat_file=tmp_path / "heartbeat"
    )
    worker._heartbeat()
    beat = read_heartbeat(tmp_path / "heartbeat")
    assert beat is not None and not beat.redis_ok and beat.mongodb_ok


@pytest.mark.redis_server
def test_run_refused_at_start_is_one_line_and_exit_1(private_redis, tmp_path):
    """``florist-worker run`` with a user Redis refuses: one line naming what to check."""
    import os
    import subprocess
    import sys

    admin = redis.Redis(port=private_redis.port, socket_timeout=5)
    try:
        admin.acl_setuser(
            "worker", enabled=True, passwords=["+right"], keys=["~*"], commands=["+@all"]
        )
    finally:
        admin.close()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FLORIST_")}
    environment |= {
        "FLORIST_REDIS_URL": f"redis://worker:wrong@127.0.0.1:{private_redis.port}/0",
        "FLORIST_MONGODB_URI": "memory://",
        "FLORIST_HEARTBEAT_FILE": str(tmp_path / "heartbeat"),
        "FLORIST_LOG_FORMAT": "json",
    }
    completed = subprocess.run(
        [str(Path(sys.executable).with_name("florist-worker")), "run"],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
        check=False,
    )
    assert completed.returncode == 1, completed.stderr[-2000:]
    last = completed.stderr.splitlines()[-1]
    assert last.startswith("florist-worker run: error: Redis refused the worker's user"), last
    assert "FLORIST_REDIS_URL" in last and "wrong" not in last
