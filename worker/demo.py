"""The whole event path in one process: an FL server and two clients report, a worker applies.

``florist-worker demo`` (see :mod:`worker.commands.demo`) calls :func:`run_demo`. The
run is the embedded sample (:mod:`worker.samples`) replayed the way the real producers
would send it: the FLorist server publishes ``IN_PROGRESS`` through
:class:`~worker.producer.EventPublisher`, and each FL host reports through its own
:class:`~worker.producer.StreamMetricsReporter`, whose ``report()`` calls are derived
from consecutive sample snapshots (:func:`plan_steps`). After every step a
:class:`~worker.consumer.Worker` drains the stream, and the job document is read back to
show progress.

The demo never touches anyone's events: it writes to a stream, group and dead-letter
stream of its own (:meth:`DemoNames.fresh`) and deletes them when it ends, whatever
happens.

With ``kill_server`` (``florist-worker demo --kill-server``) the FL server process "dies"
mid-run (:func:`kill_point`): its reporter stops publishing and its heartbeat thread
stops, so no ``fit_end`` ever comes, while the clients' processes live on (they wait for
the server and keep sending heartbeats). The worker's watchdog then finishes the job as
``FINISHED_WITH_ERROR`` with its silence message, in a few seconds: the limits are
shortened for this demo only (:data:`KILL_STALE_AFTER_S`,
:data:`KILL_WATCHDOG_INTERVAL_S`, :data:`KILL_HEARTBEAT_INTERVAL_S`).
"""

from __future__ import annotations

import json
import secrets
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO

import redis
from pymongo.collection import Collection
from pymongo.database import Database

from worker.consumer import Worker
from worker.document import CLIENT_LAST_EVENT, SERVER_LAST_EVENT
from worker.entities import JOB_COLLECTION, JobStatus
from worker.events import CLIENT_METRICS, JOB_STATUS, SERVER_METRICS
from worker.outcomes import Outcome
from worker.producer import EventPublisher, StreamMetricsReporter
from worker.samples import load_job_document, load_run_events
from worker.settings import Settings
from worker.watchdog import consumed_horizon, job_liveness, lock_key, redis_now_ms

__all__ = [
    "DEFAULT_PACE_S",
    "KILL_HEARTBEAT_INTERVAL_S",
    "KILL_STALE_AFTER_S",
    "KILL_WATCHDOG_INTERVAL_S",
    "SERVER",
    "DemoNames",
    "DemoResult",
    "Progress",
    "ReportStep",
    "StatusStep",
    "current_round",
    "kill_point",
    "kill_settings",
    "plan_steps",
    "read_progress",
    "run_demo",
    "snapshot_changes",
    "summary_lines",
]

SERVER: Final = "server"
DEFAULT_PACE_S: Final = 0.15  # 38 steps: about 6 s, slow enough to watch
SLACK_S: Final = 20.0  # beyond the pauses, before the demo gives up waiting on the worker
# --kill-server, for the demo only: the production defaults are 600 s, 30 s and 30 s.
KILL_STALE_AFTER_S: Final = 2.0  # FLORIST_STALE_AFTER_S
KILL_WATCHDOG_INTERVAL_S: Final = 0.5  # FLORIST_WATCHDOG_INTERVAL_S
KILL_HEARTBEAT_INTERVAL_S: Final = 0.5  # the reporters' heartbeat_interval_s
KILL_SLACK_S: Final = 10.0  # beyond the limit, before the demo stops waiting for the watchdog
WATCHDOG_MESSAGE_START: Final = "no event from the FL server since "
_SCORE_WORDS: Final = ("loss", "accuracy")


@dataclass(frozen=True, slots=True)
class StatusStep:
    """The FLorist server publishing a change of the job's status."""

    status: JobStatus


@dataclass(frozen=True, slots=True)
class ReportStep:
    """One ``report(data, round=...)`` call of one host's reporter.

    ``host`` is :data:`SERVER` or the client's ``uuid``.
    """

    host: str
    data: dict[str, Any]
    round: int | None = None


Step = StatusStep | ReportStep


@dataclass(frozen=True, slots=True)
class DemoNames:
    """The demo's own Redis names, so that a shared Redis keeps its real events apart."""

    stream: str
    group: str
    dead_stream: str
    consumer: str

    @classmethod
    def fresh(cls) -> DemoNames:
        """Names no other run uses: ``florist:demo:<random>:...``."""
        prefix = f"florist:demo:{secrets.token_hex(4)}"
        return cls(f"{prefix}:events", f"{prefix}:group", f"{prefix}:dead", f"{prefix}:worker")

    @property
    def keys(self) -> tuple[str, str]:
        """The Redis keys the demo creates (the group lives inside the stream key)."""
        return (self.stream, self.dead_stream)


@dataclass(frozen=True, slots=True)
class Progress:
    """What the job document says right now: its status and each host's current round."""

    status: str
    rounds: tuple[tuple[str, int | None], ...]  # (label, round) for the server, then clients

    def line(self) -> str:
        hosts = " | ".join(f"{label} round {_round_text(r)}" for label, r in self.rounds)
        return f"status {self.status} | {hosts}"


@dataclass(slots=True)
class DemoResult:
    """How a demo run ended; ``problems`` is empty when it succeeded."""

    job_id: str
    document: dict[str, Any] | None
    counts: Counter[str] = field(default_factory=Counter)
    events: int = 0
    dead_letters: list[dict[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    killed_at_step: int | None = None  # --kill-server: the step at which the server died

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def error_message(self) -> str | None:
        """The final document's ``error_message`` (the watchdog's, with --kill-server)."""
        message = None if self.document is None else self.document.get("error_message")
        return message if isinstance(message, str) else None


# -- planning the producers' calls ---------------------------------------------------


def snapshot_changes(
    previous: Mapping[str, Any], current: Mapping[str, Any]
) -> list[tuple[dict[str, Any], int | None]]:
    """The ``(data, round)`` report calls that turn ``previous`` into ``current``.

    Changed top-level keys become one call with round None; changed keys inside
    ``rounds[r]`` one call with round ``r``, rounds in numeric order. A reporter can only
    add or overwrite keys, so a snapshot that drops one is refused with ``ValueError``.
    """
    _refuse_dropped(previous, current, "the snapshot")
    calls: list[tuple[dict[str, Any], int | None]] = []
    top = {
        key: value
        for key, value in current.items()
        if not (key == "rounds" and isinstance(value, Mapping)) and previous.get(key) != value
    }
    if top:
        calls.append((top, None))
    rounds = current.get("rounds")
    if not isinstance(rounds, Mapping):
        return calls
    before = previous.get("rounds")
    before_rounds: Mapping[str, Any] = before if isinstance(before, Mapping) else {}
    for key in sorted(rounds, key=_round_number):
        now = rounds[key]
        was = before_rounds.get(key)
        was_round: Mapping[str, Any] = was if isinstance(was, Mapping) else {}
        if not isinstance(now, Mapping):
            raise ValueError(f"rounds[{key!r}] is not an object")
        _refuse_dropped(was_round, now, f"rounds[{key!r}]")
        changed = {name: value for name, value in now.items() if was_round.get(name) != value}
        if changed:
            calls.append((changed, _round_number(key)))
    return calls


def plan_steps(events: Iterable[Mapping[str, Any]]) -> list[Step]:
    """The sample run as the producers' calls: status changes and report calls, in order."""
    snapshots: dict[str, Mapping[str, Any]] = {}
    steps: list[Step] = []
    for event in events:
        kind = event.get("type")
        if kind == JOB_STATUS:
            steps.append(StatusStep(JobStatus(event["status"])))
            continue
        if kind == SERVER_METRICS:
            host = SERVER
        elif kind == CLIENT_METRICS:
            host = str(event["client_uuid"])
        else:
            raise ValueError(f"unknown event type in the sample: {kind!r}")
        metrics = event["metrics"]
        for data, round_number in snapshot_changes(snapshots.get(host, {}), metrics):
            steps.append(ReportStep(host, data, round_number))
        snapshots[host] = metrics
    return steps


def kill_point(steps: Sequence[Step]) -> int:
    """Where ``--kill-server`` kills the server: at its first step in the second half of
    the run (in the sample, before it ends round 2's fit: the clients have sent theirs)."""
    middle = len(steps) // 2
    for number, step in enumerate(steps):
        if number >= middle and isinstance(step, ReportStep) and step.host == SERVER:
            return number
    return len(steps)


def _refuse_dropped(previous: Mapping[str, Any], current: Mapping[str, Any], where: str) -> None:
    dropped = [key for key in previous if key not in current]
    if dropped:
        raise ValueError(f"{where} drops {dropped}: a reporter can only add or update keys")


def _round_number(key: str) -> int:
    try:
        return int(key)
    except ValueError:
        raise ValueError(f"round key {key!r} is not an integer") from None


# -- reading the job document --------------------------------------------------------


def _metrics(text: Any) -> dict[str, Any]:
    """A stored metrics text as a dict; empty when absent or unreadable."""
    if not isinstance(text, str):
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def current_round(metrics_text: Any) -> int | None:
    """The highest round in a stored metrics text (None before the first round)."""
    rounds = _metrics(metrics_text).get("rounds")
    if not isinstance(rounds, dict):
        return None
    numbers = [int(key) for key in rounds if isinstance(key, str) and key.lstrip("-").isdigit()]
    return max(numbers, default=None)


def _client_label(index: int) -> str:
    return f"client-{index}"


def _hosts(document: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """``(label, metrics text)`` for the server, then each client in document order."""
    hosts = [(SERVER, document.get("server_metrics"))]
    clients = document.get("clients_info") or []
    hosts += [(_client_label(i), client.get("metrics")) for i, client in enumerate(clients)]
    return hosts


def read_progress(document: Mapping[str, Any]) -> Progress:
    return Progress(
        str(document.get("status")),
        tuple((label, current_round(text)) for label, text in _hosts(document)),
    )


def _round_text(number: int | None) -> str:
    return "-" if number is None else str(number)


def _scores(round_metrics: Mapping[str, Any]) -> list[tuple[str, float]]:
    """Loss and accuracy values of one round, one level of nesting deep."""
    found: list[tuple[str, float]] = []
    for key, value in round_metrics.items():
        if _is_number(value) and _is_score(key):
            found.append((key, value))
        elif isinstance(value, Mapping):
            for inner, item in value.items():
                if _is_number(item) and (_is_score(inner) or _is_score(key)):
                    found.append((inner if _is_score(inner) else f"{key}.{inner}", item))
    return found


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_score(name: str) -> bool:
    return any(word in name.lower() for word in _SCORE_WORDS)


def _host_line(label: str, metrics_text: Any) -> str:
    metrics = _metrics(metrics_text)
    last = current_round(metrics_text)
    parts = [f"{label:<8} rounds {_round_text(last)}"]
    if "fit_end" in metrics:
        parts.append(f"fit_end {metrics['fit_end']}")
    rounds = metrics.get("rounds")
    if last is not None and isinstance(rounds, dict) and isinstance(rounds.get(str(last)), dict):
        parts += [f"{name} {value:g}" for name, value in _scores(rounds[str(last)])]
    return " | ".join(parts)


def summary_lines(result: DemoResult) -> list[str]:
    """The final document, event and outcome counts, for people to read."""
    document = result.document
    if document is None:
        return [f"job {result.job_id}: no document found"]
    lines = [f"final job document {result.job_id}:", f"  status   {document.get('status')}"]
    lines += [f"  {_host_line(label, text)}" for label, text in _hosts(document)]
    if isinstance(document.get("error_message"), str):
        lines.append(f"  error    {document['error_message']}")
    server_keys = ", ".join(_metrics(document.get("server_metrics"))) or "(none)"
    lines.append(f"  last server metrics keys: {server_keys}")
    outcomes = ", ".join(f"{name} {n}" for name, n in sorted(result.counts.items())) or "none"
    lines.append(
        f"events: {result.events} published; outcomes: {outcomes}; "
        f"dead letters: {len(result.dead_letters)}"
    )
    return lines


# -- running it ----------------------------------------------------------------------


def demo_settings(names: DemoNames, **overrides: Any) -> Settings:
    """Worker settings on the demo's own names; the heartbeat file stays private too."""
    heartbeat = Path(tempfile.gettempdir()) / f"{names.consumer.replace(':', '-')}.heartbeat"
    values: dict[str, Any] = {
        "stream": names.stream,
        "group": names.group,
        "dead_stream": names.dead_stream,
        "consumer": names.consumer,
        "heartbeat_file": heartbeat,
    }
    values.update(overrides)
    return Settings(**values)


def kill_settings(names: DemoNames, **overrides: Any) -> Settings:
    """:func:`demo_settings` with the watchdog's limits shortened for ``--kill-server``."""
    values: dict[str, Any] = {
        "stale_after_s": KILL_STALE_AFTER_S,
        "watchdog_interval_s": KILL_WATCHDOG_INTERVAL_S,
    }
    values.update(overrides)
    return demo_settings(names, **values)


def run_demo(
    redis_client: redis.Redis,
    database: Database[Any],
    *,
    names: DemoNames | None = None,
    settings: Settings | None = None,
    pace_s: float = DEFAULT_PACE_S,
    remove_job: bool = False,
    deadline_s: float | None = None,
    out: TextIO,
    sleep: Callable[[float], None] = time.sleep,
    kill_server: bool = False,
) -> DemoResult:
    """Create the sample job, play its run through the producers, apply it, summarize.

    Prints progress lines to ``out`` whenever the document's status or a host's round
    changes, then the summary (:func:`summary_lines`); the caller reports
    ``result.problems``.

    The worker waits out a Redis or MongoDB outage as it would in production; the demo
    stops it after ``deadline_s`` (default: the pauses plus :data:`SLACK_S`) and reports
    that instead of hanging. The demo's stream and dead-letter stream are deleted at
    the end (and the job document too with ``remove_job``), also when something fails.

    With ``kill_server`` the server dies at :func:`kill_point`, and the demo waits for the
    worker's watchdog (scanning every ``settings.watchdog_interval_s``) to finish the job;
    it succeeds when the job ends ``FINISHED_WITH_ERROR`` with the watchdog's message.
    ``settings`` should then have short limits (default: :func:`kill_settings`).
    """
    names = names or DemoNames.fresh()
    settings = settings or (kill_settings(names) if kill_server else demo_settings(names))
    document = load_job_document()
    job_id = document["_id"] = str(uuid.uuid4())
    result = DemoResult(job_id, None)
    collection = database[JOB_COLLECTION]

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    say(_names_line(names))
    try:
        collection.insert_one(document)
        say(f"created job {job_id} ({document['status']}, {len(_hosts(document)) - 1} clients)")
        publisher = EventPublisher(redis_client, names.stream)
        steps = plan_steps(load_run_events())
        kill_at = kill_point(steps) if kill_server else None
        if kill_at is not None:
            say(_kill_announcement(kill_at, len(steps), settings))
        reporters = _reporters(publisher, job_id, steps, short_heartbeats=kill_server)
        worker = Worker(redis_client, database, settings)
        limit_s = _time_limit_s(len(steps), pace_s, deadline_s, settings, kill_server=kill_server)
        play = _Play(steps, job_id, publisher, reporters, worker, collection, result, pace_s)
        _play_within(limit_s, play, say, sleep, kill_at=kill_at)
        _read_outcome(play, redis_client, names, limit_s, killed=kill_at is not None)
        for line in summary_lines(result):
            say(line)
    finally:
        _clean_up(redis_client, names, collection, job_id, say, kill_server, remove_job)
    return result


def _names_line(names: DemoNames) -> str:
    return (
        f"events go to the demo's own stream {names.stream} (group {names.group}, dead letters "
        f"{names.dead_stream}); they are deleted at the end"
    )


def _kill_announcement(kill_at: int, step_count: int, settings: Settings) -> str:
    return (
        f"--kill-server: the FL server process dies at step {kill_at + 1} of "
        f"{step_count}; limits shortened for the demo: FLORIST_STALE_AFTER_S="
        f"{settings.stale_after_s:g}, FLORIST_WATCHDOG_INTERVAL_S="
        f"{settings.watchdog_interval_s:g}, reporter heartbeats every "
        f"{KILL_HEARTBEAT_INTERVAL_S:g} s"
    )


def _time_limit_s(
    step_count: int,
    pace_s: float,
    deadline_s: float | None,
    settings: Settings,
    *,
    kill_server: bool,
) -> float:
    """``deadline_s``, or the pauses plus :data:`SLACK_S` (and, with ``kill_server``, the
    watchdog's limit plus :data:`KILL_SLACK_S`)."""
    if deadline_s is not None:
        return deadline_s
    limit_s = pace_s * step_count + SLACK_S
    if kill_server:
        limit_s += settings.stale_after_s + KILL_SLACK_S
    return limit_s


def _play_within(
    limit_s: float,
    play: _Play,
    say: Callable[[str], None],
    sleep: Callable[[float], None],
    *,
    kill_at: int | None,
) -> None:
    """:func:`_play`, with the worker stopped after ``limit_s``; no reporter's heartbeat
    thread outlives it, whatever happens."""
    timer = threading.Timer(limit_s, play.worker.stop)
    timer.daemon = True
    timer.start()
    try:
        _play(play, say, sleep, kill_at=kill_at)
    finally:
        timer.cancel()
        for reporter in play.reporters.values():
            _kill(reporter)


def _read_outcome(
    play: _Play, redis_client: redis.Redis, names: DemoNames, limit_s: float, *, killed: bool
) -> None:
    """Fill the play's result with the final document, the counts and the problems found."""
    result, worker = play.result, play.worker
    if worker.stopping:
        result.problems.append(
            f"gave up after {limit_s:.0f} s: the worker was still waiting "
            "(is Redis or MongoDB unavailable?)"
        )
    result.document = play.collection.find_one({"_id": result.job_id})
    result.events = int(redis_client.xlen(names.stream))
    result.dead_letters = _dead_letters(redis_client, names.dead_stream)
    result.problems += _problems(result, worker.stream.pending_count(), killed=killed)


def _clean_up(
    redis_client: redis.Redis,
    names: DemoNames,
    collection: Collection[Any],
    job_id: str,
    say: Callable[[str], None],
    kill_server: bool,
    remove_job: bool,
) -> None:
    """Delete the demo's Redis keys (and the job document with ``remove_job``)."""
    if kill_server:
        redis_client.delete(*names.keys, lock_key(names.stream))
    else:
        redis_client.delete(*names.keys)
    say(
        f"removed the demo's Redis keys: stream {names.stream} (with group {names.group}) "
        f"and dead-letter stream {names.dead_stream}"
    )
    if remove_job:
        collection.delete_one({"_id": job_id})
        say(f"removed the demo job {job_id} from the database")


@dataclass(frozen=True, slots=True)
class _Play:
    """What :func:`_play` plays the run with, and where it counts what happened."""

    steps: Sequence[Step]
    job_id: str
    publisher: EventPublisher
    reporters: Mapping[str, StreamMetricsReporter]
    worker: Worker
    collection: Collection[Any]
    result: DemoResult
    pace_s: float


def _play(
    play: _Play,
    say: Callable[[str], None],
    sleep: Callable[[float], None],
    *,
    kill_at: int | None = None,
) -> None:
    """Each step, then a drain and a progress line when the document changed. With
    ``kill_at``, the server dies before that step, and the rest of the run is the wait
    for the watchdog (:func:`_await_watchdog`)."""
    worker, result, reporters = play.worker, play.result, play.reporters
    started = time.monotonic()
    shown: Progress | None = None
    for number, step in enumerate(play.steps):
        if number and play.pace_s > 0:
            sleep(play.pace_s)
        if number == kill_at:
            _kill(reporters[SERVER])
            result.killed_at_step = number
            say(
                f"[{time.monotonic() - started:5.1f}s] the FL server process dies: no more "
                "events from it (no fit_end, its heartbeats stopped); the clients wait for it"
            )
            shown = _await_watchdog(play, say, sleep, started, shown)
            break
        if isinstance(step, StatusStep):
            play.publisher.status(play.job_id, step.status)
        else:
            reporters[step.host].report(step.data, round=step.round)
        result.counts.update(worker.drain())
        if worker.stopping:
            return
        if kill_at is not None:
            worker.run_watchdog()  # as a running worker does: the live job is left alone
        progress = read_progress(play.collection.find_one({"_id": play.job_id}) or {})
        if progress != shown:
            say(f"[{time.monotonic() - started:5.1f}s] {progress.line()}")
            shown = progress
    for host, reporter in reporters.items():
        if host == SERVER and kill_at is not None:
            continue  # a dead process publishes nothing more
        reporter.shutdown()
        if reporter.pending:
            result.problems.append(f"the {reporter.host_type} could not publish its metrics")
    result.counts.update(worker.drain())


def _kill(reporter: StreamMetricsReporter) -> None:
    """The server process dies: its heartbeat thread stops and it reports nothing more
    (``shutdown()`` is not called: a killed process publishes nothing on its way out)."""
    reporter._stop_heartbeats()  # the thread a real kill would take with the process


def _await_watchdog(
    play: _Play,
    say: Callable[[str], None],
    sleep: Callable[[float], None],
    started: float,
    shown: Progress | None,
) -> Progress | None:
    """Run the worker and its watchdog every interval until the job is no longer
    IN_PROGRESS, showing the server's silence as the watchdog counts it; gives up after
    the limit plus :data:`KILL_SLACK_S` (or when the demo's deadline stops the worker)."""
    job_id, worker, result = play.job_id, play.worker, play.result
    settings = worker.settings
    give_up = time.monotonic() + settings.stale_after_s + KILL_SLACK_S
    while not worker.stopping:
        result.counts.update(worker.drain())
        report = worker.run_watchdog()
        if report is not None and report.finished:
            say(
                f"[{time.monotonic() - started:5.1f}s] the watchdog publishes "
                f"job.status FINISHED_WITH_ERROR for job {job_id}"
            )
        result.counts.update(worker.drain())
        document = play.collection.find_one({"_id": job_id}) or {}
        progress = read_progress(document)
        if progress != shown:
            say(f"[{time.monotonic() - started:5.1f}s] {progress.line()}")
            shown = progress
        if document.get("status") != JobStatus.IN_PROGRESS.value:
            if isinstance(document.get("error_message"), str):
                say(
                    f"[{time.monotonic() - started:5.1f}s] error_message: "
                    f"{document['error_message']}"
                )
            return shown
        if time.monotonic() >= give_up:
            return shown
        say(f"[{time.monotonic() - started:5.1f}s] {_silence_line(worker, document)}")
        sleep(settings.watchdog_interval_s)
    return shown


def _silence_line(worker: Worker, document: Mapping[str, Any]) -> str:
    """The hosts' silence, in stream time where the group has consumed to."""
    settings = worker.settings
    now_ms = redis_now_ms(worker.redis)
    horizon = consumed_horizon(worker.redis, settings.stream, settings.group, now_ms) or now_ms
    last = document.get(SERVER_LAST_EVENT)
    since = int(last) if isinstance(last, int | float) else horizon
    liveness = job_liveness(document, horizon, settings.stale_after_s, since)
    parts = [f"waiting: server silent {liveness.server.age_s or 0.0:.1f} s"]
    parts[0] += f" (the watchdog finishes the job after {settings.stale_after_s:g} s)"
    for index, member in enumerate(document.get("clients_info") or []):
        heard = member.get(CLIENT_LAST_EVENT) if isinstance(member, Mapping) else None
        if isinstance(heard, int | float):
            parts.append(f"{_client_label(index)} heard {max(0, horizon - heard) / 1000:.1f} s ago")
    return " | ".join(parts)


def _reporters(
    publisher: EventPublisher, job_id: str, steps: Iterable[Step], *, short_heartbeats: bool
) -> dict[str, StreamMetricsReporter]:
    """One reporter per FL host of the run, as each process of a real run would have;
    with ``short_heartbeats`` (--kill-server) each sends a heartbeat every
    :data:`KILL_HEARTBEAT_INTERVAL_S`."""
    options: dict[str, Any] = {}
    if short_heartbeats:
        options["heartbeat_interval_s"] = KILL_HEARTBEAT_INTERVAL_S
    reporters: dict[str, StreamMetricsReporter] = {}
    for step in steps:
        if not isinstance(step, ReportStep) or step.host in reporters:
            continue
        if step.host == SERVER:
            reporter = StreamMetricsReporter(publisher, job_id, host_type="server", **options)
        else:
            reporter = StreamMetricsReporter(
                publisher, job_id, host_type="client", client_uuid=step.host, **options
            )
        reporters[step.host] = reporter
    return reporters


def _dead_letters(redis_client: redis.Redis, dead_stream: str) -> list[dict[str, str]]:
    entries: list[tuple[Any, dict[Any, Any] | None]] = redis_client.xrange(dead_stream) or []
    return [
        {_text(key): _text(value) for key, value in (fields or {}).items()}
        for _entry_id, fields in entries
    ]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _problems(result: DemoResult, pending: int, *, killed: bool = False) -> list[str]:
    problems = []
    status = None if result.document is None else result.document.get("status")
    expected = JobStatus.FINISHED_WITH_ERROR if killed else JobStatus.FINISHED_SUCCESSFULLY
    if status != expected.value:
        problems.append(f"final status is {status}, expected {expected.value}")
    if killed:
        message = result.error_message or ""
        if not (message.startswith(WATCHDOG_MESSAGE_START) and "florist-worker" in message):
            problems.append(
                f"error_message is {result.error_message!r}, expected the watchdog's "
                f"'{WATCHDOG_MESSAGE_START}...'"
            )
        if "fit_end" in _metrics(
            None if result.document is None else result.document.get("server_metrics")
        ):
            problems.append("the server's fit_end reached the document after it was killed")
    dead_outcomes = sum(
        count
        for name, count in result.counts.items()
        if Outcome(name).dead_at_once or Outcome(name).retryable
    )
    if result.dead_letters or dead_outcomes:
        reasons = Counter(letter.get("dead_reason", "?") for letter in result.dead_letters)
        detail = ", ".join(f"{reason} {n}" for reason, n in sorted(reasons.items()))
        problems.append(
            f"{len(result.dead_letters)} dead letters ({detail or 'none yet'}), "
            f"{dead_outcomes} entries with a dead-letter or retry outcome"
        )
    if pending:
        problems.append(f"{pending} entries are still pending in the group")
    return problems
