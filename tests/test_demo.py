"""``florist-worker demo``: the sample run through producers, stream and worker, in one process."""

from __future__ import annotations

import argparse
import io
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis
from pymongo.database import Database

from tests.conftest import load_job_document, load_sample_entries
from tests.redis_server import free_port
from worker import demo, samples
from worker.cli import main
from worker.commands import demo as demo_command
from worker.entities import Job, JobStatus
from worker.producer import EventPublisher, StreamMetricsReporter
from worker.store import MongoJobStore, StoreUnavailable

FLORIST_WORKER = Path(sys.executable).parent / "florist-worker"
STREAM_LINE = re.compile(r"own stream (\S+) \(group (\S+), dead letters (\S+)\)")


def closed_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


def last_snapshots() -> dict[str, dict[str, Any]]:
    """The last sample snapshot per host (``server`` or the client's uuid)."""
    last: dict[str, dict[str, Any]] = {}
    for event in samples.load_run_events():
        if "metrics" in event:
            last[event.get("client_uuid", demo.SERVER)] = event["metrics"]
    return last


def run_in_process(
    redis_client: redis.Redis, database: Database[Any], **kwargs: Any
) -> tuple[demo.DemoResult, str]:
    out = io.StringIO()
    result = demo.run_demo(redis_client, database, pace_s=0, out=out, **kwargs)
    return result, out.getvalue()


def parse_demo_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    demo_command.register(parser.add_subparsers())
    return parser.parse_args(["demo", *argv])


# -- the embedded samples ----------------------------------------------------------


def test_embedded_samples_are_the_shared_ones() -> None:
    assert samples.load_job_document() == load_job_document()
    shared = load_sample_entries()
    embedded = samples.load_run_events()
    assert len(embedded) == len(shared) == 38
    for ours, theirs in zip(embedded, shared, strict=True):
        if "metrics" in theirs:
            theirs = {**theirs, "metrics": json.loads(theirs["metrics"])}
        assert ours == theirs


def test_sample_loaders_return_fresh_copies() -> None:
    samples.load_job_document()["status"] = "changed"
    assert samples.load_job_document()["status"] == "NOT_STARTED"


# -- from snapshots to report calls ------------------------------------------------


def test_snapshot_changes_splits_top_level_and_round_keys() -> None:
    previous = {"host_type": "server", "rounds": {"1": {"a": 1}}}
    current = {
        "host_type": "server",
        "fit_end": "t",
        "rounds": {"1": {"a": 1, "b": 2}, "10": {"c": 3}, "9": {"d": 4}},
    }
    assert demo.snapshot_changes(previous, current) == [
        ({"fit_end": "t"}, None),
        ({"b": 2}, 1),
        ({"d": 4}, 9),
        ({"c": 3}, 10),
    ]


def test_snapshot_changes_of_an_unchanged_snapshot_is_nothing() -> None:
    snapshot = {"host_type": "client", "rounds": {"1": {"a": 1}}}
    assert demo.snapshot_changes(snapshot, snapshot) == []


@pytest.mark.parametrize(
    ("previous", "current"),
    [
        ({"fit_start": "t"}, {"host_type": "server"}),
        ({"rounds": {"1": {"a": 1}}}, {"rounds": {"1": {"b": 2}}}),
    ],
)
def test_snapshot_changes_refuses_a_dropped_key(
    previous: dict[str, Any], current: dict[str, Any]
) -> None:
    with pytest.raises(ValueError, match="drops"):
        demo.snapshot_changes(previous, current)


def test_plan_starts_with_the_status_and_reports_every_snapshot() -> None:
    steps = demo.plan_steps(samples.load_run_events())
    assert steps[0] == demo.StatusStep(JobStatus.IN_PROGRESS)
    reports = [step for step in steps if isinstance(step, demo.ReportStep)]
    assert len(reports) == 37
    assert {step.host for step in reports} == {
        demo.SERVER,
        *(client["uuid"] for client in load_job_document()["clients_info"]),
    }
    assert reports[-1] == demo.ReportStep(demo.SERVER, {"shutdown": "2024-11-20 14:01:30.900000"})


def test_planned_reports_republish_the_sample_snapshots_exactly() -> None:
    """Each report call through a real reporter publishes the sample's next snapshot."""
    client = fakeredis.FakeRedis()
    publisher = EventPublisher(client, "demo-test")
    job = load_job_document()
    reporters = {demo.SERVER: StreamMetricsReporter(publisher, job["_id"], host_type="server")}
    for info in job["clients_info"]:
        reporters[info["uuid"]] = StreamMetricsReporter(
            publisher, job["_id"], host_type="client", client_uuid=info["uuid"]
        )
    for step in demo.plan_steps(samples.load_run_events()):
        if isinstance(step, demo.ReportStep):
            reporters[step.host].report(step.data, round=step.round)
        else:
            publisher.status(job["_id"], step.status)
    entries: list[tuple[Any, dict[bytes, bytes]]] = client.xrange("demo-test")  # type: ignore[assignment]
    published = [{k.decode(): v.decode() for k, v in fields.items()} for _id, fields in entries]
    assert len(published) == 38
    for sent, expected in zip(published, load_sample_entries(), strict=True):
        assert sent["type"] == expected["type"]
        assert sent.get("client_uuid") == expected.get("client_uuid")
        assert sent.get("status") == expected.get("status")
        if "metrics" in expected:
            assert json.loads(sent["metrics"]) == json.loads(expected["metrics"])


# -- reading progress from the document ---------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, None),
        ("not json", None),
        ("[1, 2]", None),
        ('{"host_type": "server"}', None),
        ('{"rounds": {}}', None),
        ('{"rounds": {"1": {}, "2": {}}}', 2),
        ('{"rounds": {"9": {}, "10": {}}}', 10),
    ],
)
def test_current_round_is_the_highest_round_key(text: str | None, expected: int | None) -> None:
    assert demo.current_round(text) == expected


def test_progress_line_names_the_status_and_every_host() -> None:
    document = load_job_document()
    document["status"] = "IN_PROGRESS"
    document["server_metrics"] = json.dumps({"rounds": {"1": {}, "2": {}}})
    document["clients_info"][0]["metrics"] = json.dumps({"rounds": {"2": {}}})
    document["clients_info"][1]["metrics"] = json.dumps({"rounds": {"1": {}}})
    assert demo.read_progress(document).line() == (
        "status IN_PROGRESS | server round 2 | client-0 round 2 | client-1 round 1"
    )
    document["clients_info"][1]["metrics"] = None
    assert demo.read_progress(document).line().endswith("client-1 round -")


# -- the whole run, in process -------------------------------------------------------


def test_demo_finishes_the_job_and_cleans_up(
    fake_redis: redis.Redis, database: Database[Any]
) -> None:
    fake_redis.xadd("florist:events", {"keep": "me"})
    names = demo.DemoNames.fresh()
    result, output = run_in_process(fake_redis, database, names=names)

    assert result.ok, result.problems
    assert result.counts == {"applied": 38}
    assert result.events == 38
    assert result.dead_letters == []
    document = database["job"].find_one({"_id": result.job_id})
    assert document is not None
    assert document["_id"] != load_job_document()["_id"]  # a fresh job per run
    assert document["status"] == "FINISHED_SUCCESSFULLY"
    last = last_snapshots()
    assert json.loads(document["server_metrics"]) == last[demo.SERVER]
    for client in document["clients_info"]:
        assert json.loads(client["metrics"]) == last[client["uuid"]]
    Job(**document)  # bookkeeping fields do not stop the model from loading

    assert fake_redis.keys("florist:demo:*") == []
    assert fake_redis.xlen("florist:events") == 1  # other streams untouched
    assert f"removed the demo's Redis keys: stream {names.stream}" in output


def test_demo_prints_progress_as_it_changes_and_a_summary(
    fake_redis: redis.Redis, database: Database[Any]
) -> None:
    _result, output = run_in_process(fake_redis, database)
    progress = re.findall(r"\] (status .*)", output)
    assert (
        progress[0] == "status IN_PROGRESS | server round - | client-0 round - | client-1 round -"
    )
    assert progress[-1] == (
        "status FINISHED_SUCCESSFULLY | server round 3 | client-0 round 3 | client-1 round 3"
    )
    assert len(progress) == len(set(progress))  # printed only when something changed
    assert "  status   FINISHED_SUCCESSFULLY" in output
    assert re.search(r"server\s+rounds 3 \| fit_end 2024-11-20 14:01:30.600000", output)
    assert "val - prediction - accuracy 0.935" in output
    assert re.search(r"client-0 rounds 3 \|.*eval_round_loss 0.157", output)
    assert re.search(r"client-1 rounds 3 \|.*val - prediction - accuracy 0.94", output)
    assert "last server metrics keys: host_type, fit_start, rounds, " in output
    assert "events: 38 published; outcomes: applied 38; dead letters: 0" in output


def test_demo_paces_its_steps(fake_redis: redis.Redis, database: Database[Any]) -> None:
    pauses: list[float] = []
    demo.run_demo(fake_redis, database, pace_s=0.25, out=io.StringIO(), sleep=pauses.append)
    assert pauses == [0.25] * 37  # between the 38 steps


def test_demo_removes_the_job_only_when_asked(
    fake_redis: redis.Redis, database: Database[Any]
) -> None:
    kept, _ = run_in_process(fake_redis, database)
    removed, output = run_in_process(fake_redis, database, remove_job=True)
    assert database["job"].find_one({"_id": kept.job_id}) is not None
    assert database["job"].find_one({"_id": removed.job_id}) is None
    assert removed.ok and removed.document is not None  # summarized before removal
    assert f"removed the demo job {removed.job_id}" in output


def test_demo_reports_dead_letters_and_an_unfinished_job(
    fake_redis: redis.Redis, database: Database[Any]
) -> None:
    names = demo.DemoNames.fresh()
    tight = demo.demo_settings(names, max_entry_bytes=700)  # big snapshots become invalid
    result, output = run_in_process(fake_redis, database, names=names, settings=tight)

    assert not result.ok
    assert result.counts["invalid"] > 0
    assert any(letter["dead_reason"] == "invalid" for letter in result.dead_letters)
    assert any("expected FINISHED_SUCCESSFULLY" in problem for problem in result.problems)
    assert any("dead letters (invalid" in problem for problem in result.problems)
    assert fake_redis.keys("florist:demo:*") == []  # cleaned up on failure too
    assert f"dead letters: {len(result.dead_letters)}" in output


def test_demo_reports_entries_left_for_retry(
    fake_redis: redis.Redis, database: Database[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    job = load_job_document()
    job["clients_info"][1]["uuid"] = "not-the-reporting-client"
    monkeypatch.setattr(demo, "load_job_document", lambda: job)
    result, _ = run_in_process(fake_redis, database)
    assert result.counts["unknown_client"] > 0
    assert any("still pending" in problem for problem in result.problems)
    assert any("retry outcome" in problem for problem in result.problems)


def test_demo_gives_up_instead_of_hanging_through_an_outage(
    fake_redis: redis.Redis, database: Database[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def unavailable(*_args: Any, **_kwargs: Any) -> Any:
        raise StoreUnavailable("MongoDB is down")

    monkeypatch.setattr(MongoJobStore, "apply", unavailable)
    result, output = run_in_process(fake_redis, database, deadline_s=0.5)
    assert any(problem.startswith("gave up after") for problem in result.problems)
    assert any("expected FINISHED_SUCCESSFULLY" in problem for problem in result.problems)
    assert result.counts == {}  # nothing was applied, acknowledged or dead-lettered
    assert fake_redis.keys("florist:demo:*") == []
    assert "removed the demo's Redis keys" in output


# -- choosing the services ---------------------------------------------------------


def test_fake_redis_flag_needs_no_server() -> None:
    settings = demo.demo_settings(demo.DemoNames.fresh())
    client, text = demo_command.open_redis(None, True, settings, probe_url=closed_url())
    assert isinstance(client, fakeredis.FakeRedis)
    assert "fakeredis (--fake-redis)" in text


def test_no_redis_answering_falls_back_to_fakeredis() -> None:
    probe = closed_url()
    settings = demo.demo_settings(demo.DemoNames.fresh())
    client, text = demo_command.open_redis(None, False, settings, probe_url=probe)
    assert isinstance(client, fakeredis.FakeRedis)
    assert f"no Redis answered at {probe}" in text


def test_a_local_redis_that_answers_is_used(redis_url: str) -> None:
    settings = demo.demo_settings(demo.DemoNames.fresh())
    client, text = demo_command.open_redis(None, False, settings, probe_url=redis_url)
    try:
        assert not isinstance(client, fakeredis.FakeRedis)
        assert client.ping()
        assert text == f"local Redis at {redis_url}"
    finally:
        client.close()


def test_without_redis_and_fakeredis_the_error_names_both_fixes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "fakeredis", None)  # import fails
    settings = demo.demo_settings(demo.DemoNames.fresh())
    with pytest.raises(demo_command.SetupError) as raised:
        demo_command.open_redis(None, False, settings, probe_url=closed_url())
    message = str(raised.value)
    assert "start Redis there (or pass --redis-url URL)" in message
    assert "pip install fakeredis" in message


def test_an_explicit_redis_url_must_answer(capsys: pytest.CaptureFixture[str]) -> None:
    url = closed_url()
    arguments = parse_demo_args("--redis-url", url, "--fast")
    assert arguments.handler(arguments) == 1
    error = capsys.readouterr().err
    assert f"Redis at {url} (--redis-url) did not answer" in error


def test_an_unreachable_mongodb_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(demo_command, "connect_database", lambda settings: _unreachable_database())
    arguments = parse_demo_args("--fake-redis", "--mongodb-uri", "mongodb://nowhere:1", "--fast")
    assert arguments.handler(arguments) == 1
    assert "MongoDB at mongodb://nowhere:1 did not answer" in capsys.readouterr().err


def _unreachable_database() -> Any:
    import pymongo

    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        "mongodb://127.0.0.1:1", serverSelectionTimeoutMS=100, connect=False
    )
    return client["florist-server"]


def test_flags_reject_a_negative_pace(capsys: pytest.CaptureFixture[str]) -> None:
    arguments = parse_demo_args("--fake-redis", "--pace", "-1")
    assert arguments.handler(arguments) == 2
    assert "--pace must be 0 or more" in capsys.readouterr().err


def test_handler_exits_1_when_the_job_does_not_finish(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    events = [e for e in samples.load_run_events() if "fit_end" not in e.get("metrics", {})]
    monkeypatch.setattr(demo, "load_run_events", lambda: events)
    arguments = parse_demo_args("--fake-redis", "--fast")
    assert arguments.handler(arguments) == 1
    captured = capsys.readouterr()
    assert "demo FAILED: final status is IN_PROGRESS, expected FINISHED_SUCCESSFULLY" in (
        captured.err
    )
    assert "demo OK" not in captured.out


# -- the real command line -----------------------------------------------------------


def run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FLORIST_WORKER), "demo", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_finished(completed: subprocess.CompletedProcess[str]) -> tuple[str, str, str]:
    """Exit 0 and a final summary of a finished 3-round job; returns the demo's names."""
    assert completed.returncode == 0, completed.stderr
    out = completed.stdout
    assert "  status   FINISHED_SUCCESSFULLY" in out
    for host in ("server", "client-0", "client-1"):
        assert re.search(rf"^  {host}\s+rounds 3\b", out, re.MULTILINE), host
    assert "outcomes: applied 38; dead letters: 0" in out
    assert out.rstrip().endswith(
        "demo OK: the job finished successfully and no entry was dead-lettered"
    )
    found = STREAM_LINE.search(out)
    assert found is not None
    stream, _group, dead_stream = found.groups()
    assert stream.startswith("florist:demo:")
    assert f"removed the demo's Redis keys: stream {stream}" in out
    return stream, _group, dead_stream


@pytest.mark.redis_server
def test_cli_demo_on_a_real_redis(redis_url: str, real_redis: redis.Redis) -> None:
    real_redis.xadd("florist:events", {"keep": "me"})
    completed = run_cli("--redis-url", redis_url, "--fast")
    stream, _group, dead_stream = assert_finished(completed)
    assert f"Redis:   {redis_url} (--redis-url)" in completed.stdout
    assert real_redis.exists(stream, dead_stream) == 0
    assert real_redis.keys("florist:demo:*") == []
    assert real_redis.xlen("florist:events") == 1  # the real stream is untouched


def test_cli_demo_on_fakeredis() -> None:
    completed = run_cli("--fake-redis", "--fast")
    assert_finished(completed)
    assert "Redis:   in-process fakeredis (--fake-redis)" in completed.stdout
    assert "MongoDB: in-memory (memory://)" in completed.stdout
    assert "dies" not in completed.stdout and "  error " not in completed.stdout


def test_the_cluster_variable_applies_to_a_redis_url_only(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLORIST_REDIS_CLUSTER", "true")  # set for the workers of a cluster
    assert main(["demo", "--fake-redis", "--fast"]) == 0  # fakeredis is no cluster
    assert "demo OK" in capsys.readouterr().out


# -- --kill-server: the FL server dies mid-run, the watchdog finishes the job -----------

WATCHDOG_MESSAGE = re.compile(
    r"no event from the FL server since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ; "
    r"finished by florist-worker after 2 s of silence"
)


def heartbeat_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("florist-events-heartbeat")}


def test_the_server_is_killed_in_the_second_half_of_the_run() -> None:
    steps = demo.plan_steps(samples.load_run_events())
    at = demo.kill_point(steps)
    assert at >= len(steps) // 2
    assert steps[at] == demo.ReportStep(demo.SERVER, steps[at].data, 2)  # inside round 2
    assert all(
        not (isinstance(step, demo.ReportStep) and "fit_end" in step.data) for step in steps[:at]
    )


def test_kill_settings_shorten_only_the_watchdog_limits() -> None:
    names = demo.DemoNames.fresh()
    settings = demo.kill_settings(names)
    assert (settings.stale_after_s, settings.watchdog_interval_s) == (2.0, 0.5)
    assert settings.stream == names.stream and settings.group == names.group
    assert demo.demo_settings(names).stale_after_s == 600  # the normal demo keeps the default


def test_kill_server_demo_ends_with_the_watchdogs_finish(
    fake_redis: redis.Redis, database: Database[Any]
) -> None:
    names = demo.DemoNames.fresh()
    threads_before = heartbeat_threads()
    started = time.monotonic()
    result, output = run_in_process(fake_redis, database, names=names, kill_server=True)
    took = time.monotonic() - started

    assert result.ok, result.problems
    steps = demo.plan_steps(samples.load_run_events())
    assert result.killed_at_step == demo.kill_point(steps)
    document = database["job"].find_one({"_id": result.job_id})
    assert document is not None
    assert document["status"] == "FINISHED_WITH_ERROR"
    assert WATCHDOG_MESSAGE.fullmatch(document["error_message"])
    assert result.error_message == document["error_message"]
    server = json.loads(document["server_metrics"])
    assert "fit_end" not in server and "shutdown" not in server
    assert demo.current_round(document["server_metrics"]) == 2
    assert all(demo.current_round(c["metrics"]) == 2 for c in document["clients_info"])
    assert result.dead_letters == []
    assert set(result.counts) <= {"applied", "coalesced", "duplicate"}
    assert 2.0 <= took < 15  # the shortened limit, then the watchdog's next scan

    lines = output.splitlines()
    died = next(i for i, line in enumerate(lines) if "the FL server process dies" in line)
    before, after = lines[:died], lines[died:]
    assert not any("FINISHED" in line for line in before)  # not reaped while it lived
    assert any("waiting: server silent" in line for line in after)
    assert any("the watchdog publishes job.status FINISHED_WITH_ERROR" in line for line in after)
    assert any(
        line.endswith(
            "status FINISHED_WITH_ERROR | server round 2 | client-0 round 2 | client-1 round 2"
        )
        for line in after
    )
    assert f"  error    {document['error_message']}" in lines
    assert "FLORIST_STALE_AFTER_S=2, FLORIST_WATCHDOG_INTERVAL_S=0.5" in output
    assert fake_redis.keys("florist:demo:*") == []  # the watchdog's lock key too
    assert heartbeat_threads() <= threads_before  # the clients' processes ended with the demo


def test_a_live_server_is_not_reaped_while_its_rounds_outlast_the_limit(
    fake_redis: redis.Redis, database: Database[Any]
) -> None:
    """Paced so that the run before the kill lasts longer than the 2 s limit: the server's
    heartbeats keep the job IN_PROGRESS until it dies."""
    steps = demo.plan_steps(samples.load_run_events())
    pace_s = 2.5 / demo.kill_point(steps)
    out = io.StringIO()
    result = demo.run_demo(fake_redis, database, pace_s=pace_s, out=out, kill_server=True)

    assert result.ok, result.problems
    stamps = [
        (float(m.group(1)), m.group(2))
        for m in re.finditer(r"^\[\s*([\d.]+)s\] (.*)$", out.getvalue(), re.MULTILINE)
    ]
    died = next(at for at, text in stamps if text.startswith("the FL server process dies"))
    finished = next(at for at, text in stamps if text.startswith("status FINISHED_WITH_ERROR"))
    assert died >= 2.5
    assert finished - died >= 1.5  # a full silence after the death, not after the start


def test_kill_server_handler_exits_1_when_the_watchdog_does_not_finish_the_job(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    off = demo.kill_settings
    monkeypatch.setattr(
        demo_command, "kill_settings", lambda names, **kw: off(names, **kw, stale_after_s=0)
    )
    monkeypatch.setattr(demo, "KILL_SLACK_S", 1.0)
    arguments = parse_demo_args("--fake-redis", "--fast", "--kill-server")
    threads_before = heartbeat_threads()

    assert arguments.handler(arguments) == 1

    captured = capsys.readouterr()
    assert (
        "demo FAILED: final status is IN_PROGRESS, expected FINISHED_WITH_ERROR; "
        "error_message is None, expected the watchdog's 'no event from the FL server since ...'"
    ) in captured.err
    assert "demo OK" not in captured.out
    assert heartbeat_threads() <= threads_before


def test_kill_server_handler_exits_1_when_the_job_finishes_normally(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the server's fit_end got through before the kill, the demo did not show what it
    meant to: exit 1."""
    monkeypatch.setattr(demo, "kill_point", lambda steps: len(steps))
    arguments = parse_demo_args("--fake-redis", "--fast", "--kill-server")

    assert arguments.handler(arguments) == 1

    err = capsys.readouterr().err
    assert "final status is FINISHED_SUCCESSFULLY, expected FINISHED_WITH_ERROR" in err


def test_cli_kill_server_demo_on_fakeredis() -> None:
    started = time.monotonic()
    completed = run_cli("--fake-redis", "--fast", "--kill-server")
    took = time.monotonic() - started

    assert completed.returncode == 0, completed.stderr
    out = completed.stdout
    assert "the FL server process dies" in out
    assert "  status   FINISHED_WITH_ERROR" in out
    assert re.search(r"^  server\s+rounds 2$", out, re.MULTILINE)  # no fit_end
    last = out.rstrip().splitlines()[-1]
    assert last.startswith(
        "demo OK: the FL server died mid-run and the watchdog finished the job as "
        "FINISHED_WITH_ERROR: "
    )
    assert WATCHDOG_MESSAGE.search(last)
    assert took < 20


@pytest.mark.redis_server
def test_cli_kill_server_demo_on_a_real_redis(redis_url: str, real_redis: redis.Redis) -> None:
    real_redis.xadd("florist:events", {"keep": "me"})
    completed = run_cli("--redis-url", redis_url, "--fast", "--kill-server")

    assert completed.returncode == 0, completed.stderr
    assert "  status   FINISHED_WITH_ERROR" in completed.stdout
    assert WATCHDOG_MESSAGE.search(completed.stdout)
    assert real_redis.keys("florist:demo:*") == []  # stream, dead letters and the lock
    assert real_redis.xlen("florist:events") == 1
