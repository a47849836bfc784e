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
from worker.entities import JOB_COLLECTION, JobStatus
from worker.events import CLIENT_METRICS, JOB_STATUS, SERVER_METRICS
from worker.outcomes import Outcome
from worker.producer import EventPublisher, StreamMetricsReporter
from worker.samples import load_job_document, load_run_events
from worker.settings import Settings

__all__ = [
    "DEFAULT_PACE_S",
    "SERVER",
    "DemoNames",
    "DemoResult",
    "Progress",
    "ReportStep",
    "StatusStep",
    "current_round",
    "plan_steps",
    "read_progress",
    "run_demo",
    "snapshot_changes",
    "summary_lines",
]

SERVER: Final = "server"
DEFAULT_PACE_S: Final = 0.15  # 38 steps: about 6 s, slow enough to watch
SLACK_S: Final = 20.0  # beyond the pauses, before the demo gives up waiting on the worker
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

    @property
    def ok(self) -> bool:
        return not self.problems


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
) -> DemoResult:
    """Create the sample job, play its run through the producers, apply it, summarize.

    Prints progress lines to ``out`` whenever the document's status or a host's round
    changes, then the summary (:func:`summary_lines`); the caller reports
    ``result.problems``.

    The worker waits out a Redis or MongoDB outage as it would in production; the demo
    stops it after ``deadline_s`` (default: the pauses plus :data:`SLACK_S`) and reports
    that instead of hanging. The demo's stream and dead-letter stream are deleted at
    the end (and the job document too with ``remove_job``), also when something fails.
    """
    names = names or DemoNames.fresh()
    settings = settings or demo_settings(names)
    document = load_job_document()
    job_id = document["_id"] = str(uuid.uuid4())
    result = DemoResult(job_id, None)
    collection = database[JOB_COLLECTION]

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    say(
        f"events go to the demo's own stream {names.stream} (group {names.group}, dead letters "
        f"{names.dead_stream}); they are deleted at the end"
    )
    try:
        collection.insert_one(document)
        say(f"created job {job_id} ({document['status']}, {len(_hosts(document)) - 1} clients)")
        publisher = EventPublisher(redis_client, names.stream)
        steps = plan_steps(load_run_events())
        reporters = _reporters(publisher, job_id, steps)
        worker = Worker(redis_client, database, settings)
        limit_s = pace_s * len(steps) + SLACK_S if deadline_s is None else deadline_s
        watchdog = threading.Timer(limit_s, worker.stop)
        watchdog.daemon = True
        watchdog.start()
        try:
            _play(
                steps, job_id, publisher, reporters, worker, collection, result, pace_s, say, sleep
            )
        finally:
            watchdog.cancel()
        if worker.stopping:
            result.problems.append(
                f"gave up after {limit_s:.0f} s: the worker was still waiting "
                "(is Redis or MongoDB unavailable?)"
            )
        result.document = collection.find_one({"_id": job_id})
        result.events = int(redis_client.xlen(names.stream))
        result.dead_letters = _dead_letters(redis_client, names.dead_stream)
        result.problems += _problems(result, worker.stream.pending_count())
        for line in summary_lines(result):
            say(line)
    finally:
        redis_client.delete(*names.keys)
        say(
            f"removed the demo's Redis keys: stream {names.stream} (with group {names.group}) "
            f"and dead-letter stream {names.dead_stream}"
        )
        if remove_job:
            collection.delete_one({"_id": job_id})
            say(f"removed the demo job {job_id} from the database")
    return result


def _play(
    steps: Sequence[Step],
    job_id: str,
    publisher: EventPublisher,
    reporters: Mapping[str, StreamMetricsReporter],
    worker: Worker,
    collection: Collection[Any],
    result: DemoResult,
    pace_s: float,
    say: Callable[[str], None],
    sleep: Callable[[float], None],
) -> None:
    """Each step, then a drain and a progress line when the document changed."""
    started = time.monotonic()
    shown: Progress | None = None
    for number, step in enumerate(steps):
        if number and pace_s > 0:
            sleep(pace_s)
        if isinstance(step, StatusStep):
            publisher.status(job_id, step.status)
        else:
            reporters[step.host].report(step.data, round=step.round)
        result.counts.update(worker.drain())
        if worker.stopping:
            return
        progress = read_progress(collection.find_one({"_id": job_id}) or {})
        if progress != shown:
            say(f"[{time.monotonic() - started:5.1f}s] {progress.line()}")
            shown = progress
    for reporter in reporters.values():
        reporter.shutdown()
        if reporter.pending:
            result.problems.append(f"the {reporter.host_type} could not publish its metrics")
    result.counts.update(worker.drain())


def _reporters(
    publisher: EventPublisher, job_id: str, steps: Iterable[Step]
) -> dict[str, StreamMetricsReporter]:
    """One reporter per FL host of the run, as each process of a real run would have."""
    reporters: dict[str, StreamMetricsReporter] = {}
    for step in steps:
        if not isinstance(step, ReportStep) or step.host in reporters:
            continue
        if step.host == SERVER:
            reporter = StreamMetricsReporter(publisher, job_id, host_type="server")
        else:
            reporter = StreamMetricsReporter(
                publisher, job_id, host_type="client", client_uuid=step.host
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


def _problems(result: DemoResult, pending: int) -> list[str]:
    problems = []
    status = None if result.document is None else result.document.get("status")
    if status != JobStatus.FINISHED_SUCCESSFULLY.value:
        problems.append(f"final status is {status}, expected FINISHED_SUCCESSFULLY")
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
