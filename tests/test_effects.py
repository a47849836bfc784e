"""The pure part: event + position (+ document after a miss) -> update or outcome."""

from __future__ import annotations

from worker.batch import plan_batch
from worker.document import SERVER_POSITION, STATUS_POSITION
from worker.effects import after_miss, first_write
from worker.events import Limits, parse_entry
from worker.outcomes import Outcome
from worker.positions import StreamPosition
from worker.retrying import Backoff
from worker.stream import Entry

P = StreamPosition(5, 10)


def _server(metrics='{"a": 1}'):
    return parse_entry({"v": "1", "type": "server.metrics", "job_id": "j", "metrics": metrics})


def _status(status, **extra):
    return parse_entry({"v": "1", "type": "job.status", "job_id": "j", "status": status, **extra})


def test_server_metrics_write_is_guarded_by_position():
    write = first_write(_server(), P)
    assert write is not None
    assert write.filter == {"_id": "j", SERVER_POSITION: {"$not": {"$gte": P.key}}}
    # the text as received, since it is already strict JSON
    assert write.update == {
        "$set": {"server_metrics": '{"a": 1}', SERVER_POSITION: P.key},
        "$max": {"server_last_event_ms": P.milliseconds},  # liveness (issue 12)
    }


def test_fit_end_finishes_in_the_same_update():
    write = first_write(_server('{"fit_end": "t"}'), P)
    assert write is not None
    assert write.update["$set"]["status"] == "FINISHED_SUCCESSFULLY"
    assert write.update["$set"][STATUS_POSITION] == P.key
    assert "$or" in write.filter


def test_client_write_matches_the_uuid_exactly():
    event = parse_entry(
        {"v": "1", "type": "client.metrics", "job_id": "j", "client_uuid": "u.1", "metrics": "{}"}
    )
    write = first_write(event, P)
    assert write is not None
    assert write.filter["clients_info.uuid"] == "u.1"
    assert write.filter["clients_info"]["$not"]["$elemMatch"]["uuid"] == "u.1"
    assert write.array_filters == [{"client.uuid": "u.1"}]
    assert set(write.update["$set"]) == {
        "clients_info.$[client].metrics",
        "clients_info.$[client].metrics_position",
    }


def test_after_miss_classifies():
    assert after_miss(_server(), P, None) is Outcome.UNKNOWN_JOB
    newer = {"_id": "j", SERVER_POSITION: StreamPosition(5, 11).key}
    assert after_miss(_server(), P, newer) is Outcome.DUPLICATE
    client = parse_entry(
        {"v": "1", "type": "client.metrics", "job_id": "j", "client_uuid": "u", "metrics": "{}"}
    )
    assert after_miss(client, P, {"_id": "j", "clients_info": [{"uuid": "u2"}]}) is (
        Outcome.UNKNOWN_CLIENT
    )
    assert after_miss(client, P, {"_id": "j", "clients_info": None}) is Outcome.UNKNOWN_CLIENT


def test_status_after_miss():
    finished = {"_id": "j", "status": "FINISHED_SUCCESSFULLY", STATUS_POSITION: "0" * 20 + "-1"}
    assert after_miss(_status("IN_PROGRESS"), P, finished) is Outcome.REJECTED_TRANSITION
    assert after_miss(_status("NOT_STARTED"), P, finished) is Outcome.REJECTED_TRANSITION
    assert after_miss(_status("FINISHED_SUCCESSFULLY"), P, finished) is Outcome.DUPLICATE
    assert after_miss(_status("FINISHED_WITH_ERROR"), P, finished) is (Outcome.REJECTED_TRANSITION)
    running = {"_id": "j", "status": "IN_PROGRESS"}
    assert after_miss(_status("IN_PROGRESS"), P, running) is Outcome.DUPLICATE
    # A finish by the API itself (no position) is final: never replaced.
    legacy = {"_id": "j", "status": "FINISHED_WITH_ERROR"}
    assert after_miss(_status("FINISHED_SUCCESSFULLY"), P, legacy) is (Outcome.REJECTED_TRANSITION)


def test_a_document_changed_since_the_first_write_gets_a_pinned_retry():
    later_finish = {
        "_id": "j",
        "status": "FINISHED_SUCCESSFULLY",
        STATUS_POSITION: StreamPosition(9, 0).key,
    }
    retry = after_miss(_status("FINISHED_WITH_ERROR", error_message="x"), P, later_finish)
    assert not isinstance(retry, Outcome)
    assert retry.filter == {
        "_id": "j",
        "status": "FINISHED_SUCCESSFULLY",
        STATUS_POSITION: StreamPosition(9, 0).key,
    }
    assert retry.update["$set"]["error_message"] == "x"


def test_not_started_event_is_classified_by_a_read_only():
    assert first_write(_status("NOT_STARTED"), P) is None


def test_batch_folds_older_snapshots_into_the_newest_but_never_a_finishing_one():
    def entry(i, metrics):
        fields = {"v": "1", "type": "server.metrics", "job_id": "j", "metrics": metrics}
        return Entry(f"1-{i}", {k.encode(): v.encode() for k, v in fields.items()})

    planned = plan_batch(
        [
            entry(1, "{}"),
            entry(2, '{"fit_end": 1}'),
            entry(3, '{"fit_end": 1, "shutdown": 1}'),
            Entry("1-4", None),
            Entry("1-5", {b"v": b"1"}),
        ],
        Limits(),
    )
    assert [p.outcome for p in planned] == [None, None, None, Outcome.LOST, Outcome.INVALID]
    assert [p.coalesced_into for p in planned] == ["1-3", "", "", "", ""]


def test_backoff_doubles_up_to_the_ceiling_and_survives_long_outages():
    backoff = Backoff(0.1, 10.0)
    delays = [backoff.next_delay() for _ in range(2000)]
    assert 0.05 <= delays[0] <= 0.1
    assert all(delay <= 10.0 for delay in delays)
    assert delays[-1] >= 5.0
    backoff.reset()
    assert backoff.next_delay() <= 0.1


def _sample_batch(entries, indices):
    from tests.support import fixed_id

    return [
        Entry(fixed_id(i), {k.encode(): v.encode() for k, v in entries[i].items()})
        for i in sorted(set(indices))
    ]


from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.conftest import load_sample_entries  # noqa: E402

SAMPLES = load_sample_entries()


@given(st.lists(st.integers(0, len(SAMPLES) - 1), min_size=1, max_size=38))
def test_a_whole_batch_decides_each_entry_as_batches_of_one_do(indices):
    batch = _sample_batch(SAMPLES, indices)
    whole = plan_batch(batch, Limits())
    alone = [plan_batch([entry], Limits())[0] for entry in batch]
    for together, single in zip(whole, alone, strict=True):
        assert single.outcome is None or single.outcome.dead_at_once
        assert together.outcome == single.outcome
        if together.coalesced_into:
            assert single.outcome is None  # only a valid snapshot can be superseded
        else:
            assert (together.outcome, together.event) == (single.outcome, single.event)


def test_an_invalid_newest_snapshot_does_not_swallow_the_older_ones():
    older = {"v": "1", "type": "server.metrics", "job_id": "j", "metrics": '{"a": 1}'}
    broken = {**older, "metrics": "{not json"}
    batch = [
        Entry("1-1", {k.encode(): v.encode() for k, v in older.items()}),
        Entry("1-2", {k.encode(): v.encode() for k, v in broken.items()}),
    ]
    planned = plan_batch(batch, Limits())
    assert [p.outcome for p in planned] == [None, Outcome.INVALID]
    assert not planned[0].coalesced_into
