"""Job documents shaped like today's FLorist (80e06ce) are consumed, and what FLorist wrote stays.

``worker.entities`` mirrors FLorist at 59c8cef; FLorist's ``Job`` has grown since
(``florist/api/db/server_entities.py`` at 80e06ce: ``strategy``, ``optimizer``,
``client``, ``server_pid``, ``server_log_file_path``, ``redis_address``,
``error_message``; each ``ClientInfo`` with ``redis_address``, ``hashed_password`` and,
once the start route set it, ``log_file_path``). The worker only ever writes the
metrics, the status and its own bookkeeping fields: on such a document, after a whole
training run published the way ``StreamMetricsReporter`` publishes it (by uuid), every
field FLorist wrote must be there with FLorist's value, and ``error_message`` as FLorist
writes it (``null``).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import redis
from florist_events import client_metrics_fields, server_metrics_fields
from pymongo.database import Database

from tests.support import STREAM, job_of, make_worker

JOB = "066de609-b04a-4b30-b46c-32537c7f1f6e"
SERVER = "d73243cf-8b89-473b-9607-8cd0253a101d"
CLIENTS = ("0c316680-1375-4e07-84c3-a732a2e6d03f", "5f0e6b1c-2b8e-4a8e-9d3e-2f1c7a9b4d21")

# The fields of FLorist's Job and ClientInfo models at 80e06ce (server_entities.py).
JOB_FIELDS = {
    *("_id", "status", "model", "strategy", "optimizer", "server_address", "server_config"),
    *("server_uuid", "server_metrics", "server_log_file_path", "server_pid", "redis_address"),
    *("client", "clients_info", "error_message"),
}
CLIENT_FIELDS = {
    *("_id", "service_address", "data_path", "redis_address", "hashed_password", "uuid"),
    "metrics",
}
# What the worker writes into FLorist's fields: everything else is FLorist's alone.
WRITTEN_BY_THE_WORKER = {"status", "server_metrics", "error_message"}


def florist_job() -> dict[str, Any]:
    """The job as today's start route leaves it when training begins: created with
    ``jsonable_encoder(Job(...))`` (every model field, ``None`` as ``null``), then
    IN_PROGRESS, the server's log path and pid, the uuids, each client's log path."""
    return {
        "_id": JOB,
        "status": "IN_PROGRESS",
        "model": "MNIST",
        "strategy": "FedAvg",
        "optimizer": "SGD",
        "server_address": "localhost:8080",
        "server_config": '{"n_server_rounds": 2, "batch_size": 8, "local_epochs": 1}',
        "server_uuid": SERVER,
        "server_metrics": None,
        "server_log_file_path": "/tmp/florist/server/066de609.log",
        "server_pid": "4242",
        "redis_address": "localhost:6379",
        "client": "FedAvg",
        "clients_info": [
            {
                "_id": f"client-info-{index}",
                "service_address": f"localhost:800{index + 1}",
                "data_path": f"path/to/data/{index}",
                "redis_address": "localhost:6379",
                "hashed_password": "$2b$12$LQv3c1yqBWVHxkd0LHAkCOYz6TtxMQJqhN8",
                "uuid": uuid,
                "metrics": None,
                "log_file_path": f"/tmp/florist/client-{index}.log",
            }
            for index, uuid in enumerate(CLIENTS)
        ],
        "error_message": None,
    }


def training_run() -> list[dict[str, str]]:
    """A two-round run as StreamMetricsReporter publishes it: each host by its uuid."""
    server: dict[str, Any] = {"host_type": "server", "fit_start": "2026-01-01 10:00:00"}
    clients: list[dict[str, Any]] = [{"host_type": "client", "initialized": "t"} for _ in CLIENTS]
    entries = [server_metrics_fields(server, server_uuid=SERVER)]
    for round_number in (1, 2):
        for uuid, snapshot in zip(CLIENTS, clients, strict=True):
            rounds = snapshot.setdefault("rounds", {})
            rounds[str(round_number)] = {"fit_metrics": {"accuracy": 0.5 + round_number / 10}}
            entries.append(client_metrics_fields(snapshot, client_uuid=uuid))
        server.setdefault("rounds", {})[str(round_number)] = {
            "fit_losses": {"loss": 1 / round_number}
        }
        entries.append(server_metrics_fields(server, server_uuid=SERVER))
    server["fit_end"] = "2026-01-01 10:05:00"
    entries.append(server_metrics_fields(server, server_uuid=SERVER))
    for uuid, snapshot in zip(CLIENTS, clients, strict=True):
        snapshot["shutdown"] = "2026-01-01 10:05:01"
        entries.append(client_metrics_fields(snapshot, client_uuid=uuid))
    return entries


def florists_fields_kept(before: dict[str, Any], after: dict[str, Any]) -> None:
    """Every field FLorist wrote is in ``after`` with its value, but those the worker writes."""
    assert set(before) >= JOB_FIELDS
    for name, value in before.items():
        if name not in WRITTEN_BY_THE_WORKER | {"clients_info"}:
            assert after[name] == value, name
    assert len(after["clients_info"]) == len(before["clients_info"])
    for client_before, client_after in zip(
        before["clients_info"], after["clients_info"], strict=True
    ):
        assert set(client_before) >= CLIENT_FIELDS
        for name, value in client_before.items():
            if name != "metrics":
                assert client_after[name] == value, name


def test_a_training_run_fills_todays_florist_job_and_keeps_what_florist_wrote(
    fake_redis: redis.Redis, database: Database[Any]
) -> None:
    before = florist_job()
    database["job"].insert_one(copy.deepcopy(before))
    run = training_run()
    for fields in run:
        fake_redis.xadd(STREAM, dict[Any, Any](fields))

    counts = make_worker(fake_redis, database).drain()

    assert set(counts) <= {"applied", "coalesced"} and sum(counts.values()) == len(run)

    after = job_of(database, JOB)
    florists_fields_kept(before, after)
    assert after["status"] == "FINISHED_SUCCESSFULLY"
    assert "error_message" in after and after["error_message"] is None  # as FLorist writes it
    last_server = json.loads(run[-3]["metrics"])
    assert json.loads(after["server_metrics"]) == last_server
    for index, client in enumerate(after["clients_info"]):
        assert json.loads(client["metrics"]) == json.loads(run[-2 + index]["metrics"])


def test_a_job_florist_stopped_keeps_its_status_and_error_message(
    fake_redis: redis.Redis, database: Database[Any]
) -> None:
    """FLorist's stop route sets FINISHED_WITH_ERROR and error_message itself: the run's
    later snapshots still land, its fit_end changes neither."""
    before = florist_job()
    before["status"] = "FINISHED_WITH_ERROR"
    before["error_message"] = "Job stopped by the user."
    database["job"].insert_one(copy.deepcopy(before))
    for fields in training_run():
        fake_redis.xadd(STREAM, dict[Any, Any](fields))

    make_worker(fake_redis, database).drain()

    after = job_of(database, JOB)
    florists_fields_kept(before, after)
    assert (after["status"], after["error_message"]) == (
        "FINISHED_WITH_ERROR",
        "Job stopped by the user.",
    )
    assert "fit_end" in json.loads(after["server_metrics"])
