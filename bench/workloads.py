"""Workloads built from the sample run, and the documents every system must end with.

Each generated job is the sample job with its own ``_id`` and client uuids, and each
of its hosts (one server, ``clients`` clients) reports the sample's snapshots in
order. A workload knows its final state, so a run that skipped or garbled events is
caught instead of being measured.
"""

from __future__ import annotations

import copy
import json
import random
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from pymongo.database import Database

REPO: Final = Path(__file__).resolve().parent.parent
SAMPLES_DIRS: Final = (REPO.parent / "shared" / "samples", REPO / "tests" / "samples")
NAMESPACE: Final = uuid.UUID("6f1c0c3e-9a51-4d6e-9d8e-b3a7f0c2d415")
FINISHED: Final = "FINISHED_SUCCESSFULLY"

Fields = dict[str, str]


def samples_dir() -> Path:
    """The shared samples, or the copy vendored under tests/ in a clone elsewhere."""
    for directory in SAMPLES_DIRS:
        if (directory / "job_run.jsonl").is_file():
            return directory
    raise FileNotFoundError(f"sample run not found in {', '.join(map(str, SAMPLES_DIRS))}")


def load_samples() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The sample job document and its 38 events (metrics still as objects)."""
    directory = samples_dir()
    job = json.loads((directory / "job.json").read_text())
    events = [json.loads(line) for line in (directory / "job_run.jsonl").read_text().splitlines()]
    return job, events


@dataclass(frozen=True)
class JobExpectation:
    """What a job document holds once all its events are applied."""

    server_metrics: dict[str, Any]
    client_metrics: dict[str, dict[str, Any]]
    status: str = FINISHED


@dataclass(frozen=True)
class Workload:
    """Job documents to insert first, then stream entries in XADD order."""

    name: str
    jobs: list[dict[str, Any]]
    entries: list[Fields]
    expected: dict[str, JobExpectation] = field(repr=False)

    def __len__(self) -> int:
        return len(self.entries)

    def describe(self) -> str:
        clients = len(self.jobs[0]["clients_info"]) if self.jobs else 0
        return f"{len(self.jobs)} jobs x (1 server + {clients} clients), {len(self)} events"


def job_id(index: int, tag: str) -> str:
    return str(uuid.uuid5(NAMESPACE, f"{tag}-job-{index}"))


def client_uuid(index: int, client: int, tag: str) -> str:
    return str(uuid.uuid5(NAMESPACE, f"{tag}-job-{index}-client-{client}"))


def make_job(template: dict[str, Any], index: int, clients: int, tag: str) -> dict[str, Any]:
    """The sample job under a new ``_id``, with ``clients`` clients of their own uuids."""
    job = copy.deepcopy(template)
    job["_id"] = job_id(index, tag)
    job["server_uuid"] = str(uuid.uuid5(NAMESPACE, f"{tag}-job-{index}-server"))
    base = template["clients_info"]
    job["clients_info"] = []
    for client in range(clients):
        info = copy.deepcopy(base[client % len(base)])
        info["_id"] = f"client-info-{client}"
        info["uuid"] = client_uuid(index, client, tag)
        info["service_address"] = f"localhost:{8001 + client}"
        info["data_path"] = f"path/to/data/{client}"
        job["clients_info"].append(info)
    return job


def job_run(
    job: dict[str, Any], sample_events: Sequence[dict[str, Any]], sample_uuids: Sequence[str]
) -> tuple[list[Fields], JobExpectation]:
    """The job's own events in the sample's order: client ``k`` replays the snapshots of
    sample client ``k mod 2``, so each host's snapshots stay in order."""
    uuids = [info["uuid"] for info in job["clients_info"]]
    entries: list[Fields] = []
    server_last: dict[str, Any] = {}
    client_last: dict[str, dict[str, Any]] = {}
    for event in sample_events:
        if event["type"] == "client.metrics":
            source = sample_uuids.index(event["client_uuid"])
            for client, uuid_text in enumerate(uuids):
                if client % len(sample_uuids) == source:
                    entries.append(_fields(event, job["_id"], uuid_text))
                    client_last[uuid_text] = event["metrics"]
            continue
        entries.append(_fields(event, job["_id"], None))
        if event["type"] == "server.metrics":
            server_last = event["metrics"]
    return entries, JobExpectation(server_last, client_last)


def _fields(event: dict[str, Any], job: str, client: str | None) -> Fields:
    fields = {key: value for key, value in event.items() if key != "metrics"}
    fields["job_id"] = job
    if client is not None:
        fields["client_uuid"] = client
    if "metrics" in event:
        fields["metrics"] = json.dumps(event["metrics"])
    return fields


def interleave(runs: Sequence[Sequence[Fields]], seed: int) -> list[Fields]:
    """Merge the jobs' runs at random (seeded), keeping each run's own order: jobs
    that train side by side, each at its own pace."""
    rng = random.Random(seed)
    cursors = [0] * len(runs)
    live = [index for index, run in enumerate(runs) if run]
    merged: list[Fields] = []
    while live:
        slot = rng.randrange(len(live))
        index = live[slot]
        merged.append(runs[index][cursors[index]])
        cursors[index] += 1
        if cursors[index] == len(runs[index]):
            live[slot] = live[-1]
            live.pop()
    return merged


def build(name: str, jobs: int, clients: int = 5, seed: int = 6) -> Workload:
    """``jobs`` jobs of 1 server + ``clients`` clients, their events interleaved."""
    template, events = load_samples()
    sample_uuids = [info["uuid"] for info in template["clients_info"]]
    documents, runs, expected = [], [], {}
    for index in range(jobs):
        job = make_job(template, index, clients, name)
        run, expectation = job_run(job, events, sample_uuids)
        documents.append(job)
        runs.append(run)
        expected[job["_id"]] = expectation
    return Workload(name, documents, interleave(runs, seed), expected)


def steady(jobs: int = 100) -> Workload:
    """Many jobs training at once: few events of one target share a batch."""
    return build("steady", jobs)


def backlog(jobs: int = 40) -> Workload:
    """Jobs whose events piled up while the worker was down: drained in several full
    batches, each job's snapshots mostly superseded within a batch."""
    return build("backlog", jobs)


def endless(jobs: int) -> Iterator[Fields]:
    """The steady workload's events again and again (same jobs), for long runs that
    must not grow the database: after the first pass documents keep their size."""
    workload = steady(jobs)
    while True:
        yield from workload.entries


def insert_jobs(database: Database[Any], workload: Workload) -> None:
    database["job"].insert_many(copy.deepcopy(workload.jobs))


def check_documents(database: Database[Any], workload: Workload) -> list[str]:
    """Every way the documents differ from the workload's final state (empty: all good)."""
    problems: list[str] = []
    documents = {doc["_id"]: doc for doc in database["job"].find({})}
    for job, expectation in workload.expected.items():
        document = documents.get(job)
        if document is None:
            problems.append(f"{job}: document missing")
            continue
        if document.get("status") != expectation.status:
            problems.append(f"{job}: status {document.get('status')!r}")
        if _loaded(document.get("server_metrics")) != expectation.server_metrics:
            problems.append(f"{job}: server_metrics is not the last server snapshot")
        for info in document.get("clients_info", []):
            want = expectation.client_metrics.get(info["uuid"])
            if _loaded(info.get("metrics")) != want:
                problems.append(f"{job}: client {info['uuid']} metrics not its last snapshot")
    return problems


def _loaded(text: Any) -> Any:
    return json.loads(text) if isinstance(text, str) else text
