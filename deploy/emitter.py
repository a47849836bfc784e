"""A simulated FLorist training job, for ``docker compose --profile demo up``.

1. Inserts a Job document (``NOT_STARTED``, N clients) into MongoDB, as the
   FLorist API would before training starts.
2. Publishes the events a FLorist server and its clients publish during an
   N-round run -- through :class:`worker.producer.EventPublisher`, the code
   path real producers use: ``IN_PROGRESS``, then growing metrics snapshots
   per round, ``fit_end`` (which finishes the job) and ``shutdown``.
3. Waits until the workers have applied everything and prints the job.

Exits 0 when the job ended ``FINISHED_SUCCESSFULLY`` with every final snapshot
stored, 1 when it did not within ``--wait`` seconds.  Connection settings come
from the same ``FLORIST_*`` variables as the worker (``FLORIST_REDIS_URL``,
``FLORIST_MONGODB_URI``, ``FLORIST_MONGODB_DB``, ``FLORIST_STREAM``).

    python deploy/emitter.py --rounds 3 --interval 0.5
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from florist_events.urls import client_from_url
from pymongo import MongoClient
from pymongo.database import Database

from worker.entities import JOB_COLLECTION, Client, ClientInfo, ConfigParser, Job, JobStatus, Model
from worker.producer import EventPublisher
from worker.settings import Settings, redact_url

Document = dict[str, Any]


def now() -> str:
    """A timestamp the way the FL4Health reporters write them."""
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def new_job(clients: int, rounds: int) -> Job:
    """A job as the FLorist API stores it before training starts: no metrics yet."""
    return Job(
        status=JobStatus.NOT_STARTED,
        model=Model.MNIST,
        server_address="florist-server:8080",
        server_config=json.dumps({"n_server_rounds": rounds, "batch_size": 8, "local_epochs": 1}),
        config_parser=ConfigParser.BASIC,
        server_uuid=str(uuid.uuid4()),
        redis_host="redis",
        redis_port="6379",
        clients_info=[
            ClientInfo(
                client=Client.MNIST,
                service_address=f"florist-client-{index}:8001",
                data_path=f"/data/mnist/{index}",
                redis_host="redis",
                redis_port="6379",
                uuid=str(uuid.uuid4()),
            )
            for index in range(clients)
        ],
    )


def create_job(database: Database[Document], clients: int = 2, rounds: int = 3) -> Job:
    """Insert a new ``NOT_STARTED`` job and return it."""
    job = new_job(clients, rounds)
    database[JOB_COLLECTION].insert_one(job.to_document())
    return job


def client_uuids(job: Job) -> list[str]:
    return [info.uuid for info in job.clients_info or [] if info.uuid is not None]


def publish_run(
    publisher: EventPublisher, job: Job, rounds: int = 3, interval: float = 0.0
) -> list[str]:
    """Publish a whole successful run of ``job``; return the entry IDs in order.

    Every metrics event carries the reporter's whole current snapshot, as the
    FL4Health reporters do, so the last one of each reporter is the final state.
    """
    ids: list[str] = []

    def pause() -> None:
        if interval > 0:
            time.sleep(interval)

    def server(snapshot: Document) -> None:
        ids.append(str(publisher.server_metrics(job.id, snapshot)))
        pause()

    def client(uuid_: str, snapshot: Document) -> None:
        ids.append(str(publisher.client_metrics(job.id, uuid_, snapshot)))
        pause()

    uuids = client_uuids(job)
    ids.append(str(publisher.status(job.id, JobStatus.IN_PROGRESS)))
    server_snapshot: Document = {"host_type": "server", "fit_start": now(), "rounds": {}}
    server(server_snapshot)
    client_snapshots: dict[str, Document] = {}
    for uuid_ in uuids:
        client_snapshots[uuid_] = {"host_type": "client", "initialized": now(), "rounds": {}}
        client(uuid_, client_snapshots[uuid_])

    accuracy = 0.70
    for number in range(1, rounds + 1):
        key = str(number)
        accuracy = min(0.99, accuracy + 0.07)
        server_round: Document = {"fit_round_start": now()}
        server_snapshot["rounds"][key] = server_round
        server(server_snapshot)
        for index, uuid_ in enumerate(uuids):
            client_snapshots[uuid_]["rounds"][key] = {
                "round": number,
                "round_start": now(),
                "fit_round_start": now(),
                "fit_round_losses": {"backward": round(1.0 / (number + 1) + index / 100, 4)},
                "fit_round_metrics": {"train - prediction - accuracy": round(accuracy, 4)},
                "fit_round_end": now(),
                "fit_step": 100 * number,
                "fit_epoch": number,
            }
            client(uuid_, client_snapshots[uuid_])
        server_round.update(
            {"fit_round_end": now(), "fit_round_metrics": {}, "eval_round_start": now()}
        )
        server(server_snapshot)
        for uuid_ in uuids:
            client_snapshots[uuid_]["rounds"][key].update(
                {
                    "eval_round_loss": round(0.5 / number, 4),
                    "eval_round_metrics": {"val - prediction - accuracy": round(accuracy, 4)},
                    "eval_round_end": now(),
                    "round_end": now(),
                }
            )
            client(uuid_, client_snapshots[uuid_])
        server_round.update(
            {
                "round": number,
                "val - loss - aggregated": round(0.5 / number, 4),
                "eval_round_metrics_aggregated": {
                    "val - prediction - accuracy": round(accuracy, 4)
                },
                "eval_round_end": now(),
                "fit_epoch": number,
            }
        )
        server(server_snapshot)

    # fit_end finishes the job (the worker sets FINISHED_SUCCESSFULLY); the
    # shutdown snapshots that follow are still applied.
    server_snapshot.update({"fit_end": now(), "num_rounds": rounds})
    server(server_snapshot)
    for uuid_ in uuids:
        client_snapshots[uuid_]["shutdown"] = now()
        client(uuid_, client_snapshots[uuid_])
    server_snapshot["shutdown"] = now()
    server(server_snapshot)
    return ids


def problems(database: Database[Document], job: Job) -> list[str]:
    """What is still missing from the stored job; empty once the run is fully applied."""
    document = database[JOB_COLLECTION].find_one({"_id": job.id})
    if document is None:
        return [f"job {job.id} is not in the database"]
    found: list[str] = []
    if document.get("status") != JobStatus.FINISHED_SUCCESSFULLY.value:
        found.append(f"status is {document.get('status')}")
    server_metrics = json.loads(document.get("server_metrics") or "{}")
    if "shutdown" not in server_metrics:
        found.append("server metrics have no shutdown yet")
    stored = {info.get("uuid"): info.get("metrics") for info in document.get("clients_info", [])}
    for uuid_ in client_uuids(job):
        if "shutdown" not in json.loads(stored.get(uuid_) or "{}"):
            found.append(f"client {uuid_} metrics have no shutdown yet")
    return found


def wait_until_applied(
    database: Database[Document], job: Job, timeout: float, poll: float = 0.5
) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        missing = problems(database, job)
        if not missing or time.monotonic() >= deadline:
            return missing
        time.sleep(poll)


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="emitter.py", description="Publish a simulated FLorist training job."
    )
    parser.add_argument("--rounds", type=int, default=3, help="training rounds (default 3)")
    parser.add_argument("--clients", type=int, default=2, help="FL clients (default 2)")
    parser.add_argument(
        "--interval", type=float, default=0.5, help="seconds between events (default 0.5)"
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=120.0,
        help="seconds to wait for the workers to apply the run; 0: do not wait (default 120)",
    )
    arguments = parser.parse_args(argv)
    if arguments.rounds < 1 or arguments.clients < 1:
        parser.error("--rounds and --clients must be at least 1")
    return arguments


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    settings = Settings()
    if settings.mongodb_uri.startswith("memory://"):
        print("emitter: FLORIST_MONGODB_URI=memory:// is private to one process", file=sys.stderr)
        return 2
    redis_client = client_from_url(
        settings.redis_url,
        sentinel_password=settings.sentinel_password,
        socket_timeout=10,
    )
    mongo: MongoClient[Document] = MongoClient(settings.mongodb_uri)
    try:
        database = mongo[settings.mongodb_db]
        job = create_job(database, arguments.clients, arguments.rounds)
        print(
            f"emitter: created job {job.id} in {redact_url(settings.mongodb_uri)} "
            f"database {settings.mongodb_db!r}",
            flush=True,
        )
        publisher = EventPublisher(redis_client, stream=settings.stream)
        ids = publish_run(publisher, job, arguments.rounds, arguments.interval)
        print(
            f"emitter: published {len(ids)} events to {settings.stream!r} ({ids[0]} .. {ids[-1]})",
            flush=True,
        )
        if arguments.wait <= 0:
            return 0
        missing = wait_until_applied(database, job, arguments.wait)
        if missing:
            print(f"emitter: job {job.id} not fully applied: {'; '.join(missing)}", flush=True)
            return 1
        print(f"emitter: job {job.id} is FINISHED_SUCCESSFULLY with all metrics", flush=True)
        return 0
    finally:
        mongo.close()
        redis_client.close()


if __name__ == "__main__":
    sys.exit(main())
