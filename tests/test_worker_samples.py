"""The 38 sample events, through the worker, give the document the samples describe."""

from __future__ import annotations

import json

import pytest

from tests.support import (
    decoded_metrics,
    job_of,
    last_snapshots,
    make_worker,
    pending_of,
    publish,
)


@pytest.fixture(params=["fakeredis", "real-redis"])
def client(request: pytest.FixtureRequest):
    return request.getfixturevalue("fake_redis" if request.param == "fakeredis" else "real_redis")


@pytest.mark.parametrize("batch_size", [1, 7, 200])
def test_samples_in_order_give_the_final_document(
    client, database, job_document, sample_entries, batch_size
):
    database["job"].insert_one(job_document)
    publish(client, sample_entries)

    counts = make_worker(client, database, batch_size=batch_size).drain()

    document = job_of(database, job_document["_id"])
    assert document["status"] == "FINISHED_SUCCESSFULLY"
    server, clients = decoded_metrics(document)
    expected_server, expected_clients = last_snapshots(sample_entries)
    assert server == expected_server
    assert "fit_end" in server and "shutdown" in server
    for info, metrics in zip(document["clients_info"], clients, strict=True):
        assert metrics == expected_clients[info["uuid"]]
        assert "shutdown" in metrics
    assert sum(counts.values()) == len(sample_entries)
    assert set(counts) <= {"applied", "coalesced"}
    if batch_size == 1:
        assert counts == {"applied": len(sample_entries)}
    assert pending_of(client) == 0


def test_stored_metrics_are_strict_json_text(fake_redis, database, job_document):
    database["job"].insert_one(job_document)
    metrics = json.dumps({"host_type": "server", "loss": float("nan"), "best": float("inf")})
    publish(
        fake_redis,
        [{"v": "1", "type": "server.metrics", "job_id": job_document["_id"], "metrics": metrics}],
    )
    make_worker(fake_redis, database).drain()
    text = job_of(database, job_document["_id"])["server_metrics"]
    assert "NaN" not in text.replace('"NaN"', "")
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c}")) == {
        "host_type": "server",
        "loss": "NaN",
        "best": "Infinity",
    }


def test_the_document_still_loads_as_a_job(fake_redis, database, job_document, sample_entries):
    from worker.entities import Job

    database["job"].insert_one(job_document)
    publish(fake_redis, sample_entries)
    make_worker(fake_redis, database).drain()
    job = Job(**job_of(database, job_document["_id"]))
    assert job.status.value == "FINISHED_SUCCESSFULLY"
    assert job.clients_info is not None and all(c.metrics for c in job.clients_info)
