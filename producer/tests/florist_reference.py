"""What FLorist's ``RedisMetricsReporter`` keeps and writes, and FL4Health's calls to a reporter.

Written from reading FLorist's ``florist/api/monitoring/metrics.py`` (revision
59c8cef7a8d738e9035debb3af925e8a940aa74e) and FL4Health's ``fl4health/reporting`` and
``servers/base_server.py`` / ``clients/basic_client.py``; neither is installed here.

FLorist's reporter, as a model:

- ``initialize(**kwargs)``: when ``run_id`` is None it becomes ``kwargs["id"]``, and a new
  uuid4 text when that is None too; the reporter is then initialized.
- ``report(data, round, epoch, step)``: initializes first if needed; ``round`` None:
  ``metrics.update(data)``; else, when ``epoch`` and ``step`` are both None:
  ``metrics["rounds"][round].update(data)`` (created as needed, ``round`` kept as the int
  it is); otherwise nothing changes. Then, every call, it dumps.
- dump: ``SET <run_id> json.dumps(metrics, cls=<datetime.datetime as str(...)>)`` and
  ``PUBLISH <run_id> update``.
- ``shutdown()``: nothing (FL4Health's base class).

FLorist's ``wait_for_metric(uuid, metric, ...)`` polls ``GET <uuid>`` and is satisfied when
the JSON object it holds has ``metric`` as a top-level key.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import redis


class _DatetimeAsText(json.JSONEncoder):
    def default(self, o: Any) -> Any:
        if isinstance(o, dt.datetime):
            return str(o)
        return super().default(o)


class FloristReporterModel:
    """The snapshot and the key text FLorist's reporter would have after the same calls."""

    def __init__(self, run_id: str | None = None) -> None:
        self.run_id = run_id
        self.initialized = False
        self.metrics: dict[Any, Any] = {}
        self.key_text: str | None = None  # what GET <run_id> returns after the last call

    def initialize(self, **kwargs: Any) -> None:
        if self.run_id is None:
            self.run_id = kwargs.get("id")
        if self.run_id is None:
            self.run_id = str(uuid.uuid4())
        self.initialized = True

    def report(
        self,
        data: dict[str, Any],
        round: int | None = None,
        epoch: int | None = None,
        step: int | None = None,
    ) -> None:
        if not self.initialized:
            self.initialize()
        if round is None:
            self.metrics.update(data)
        elif epoch is None and step is None:
            self.metrics.setdefault("rounds", {}).setdefault(round, {}).update(data)
        self.key_text = json.dumps(self.metrics, cls=_DatetimeAsText)

    def shutdown(self) -> None:
        pass


def wait_for_metric_finds(client: redis.Redis, key: str, metric: str) -> bool:
    """One poll of FLorist's ``wait_for_metric``: True when it would return."""
    raw = client.get(key)
    if raw is None:
        return False
    return metric in json.loads(raw.decode("utf8"))


# --- FL4Health's calls, as its ReportsManager passes them on (positionally) ------------------


Call = tuple[str, tuple[Any, ...], dict[str, Any]]


def _moment(seconds: int) -> dt.datetime:
    return dt.datetime(2024, 11, 20, 14, 0, 0) + dt.timedelta(seconds=seconds)


def server_calls(rounds: int = 2, *, datetime_values: bool = False) -> list[Call]:
    """A server's run: ``initialize(id=server_name)``, ``fit`` reports, rounds, shutdown.

    With ``datetime_values``, ``fit_start`` is a ``datetime`` object (as FL4Health's
    model-merge server reports it) instead of its text.
    """
    start = _moment(0)
    calls: list[Call] = [("initialize", (), {"id": "server-name-hash"})]
    calls.append(
        (
            "report",
            ({"fit_start": start if datetime_values else str(start), "host_type": "server"},),
            {},
        )
    )
    for r in range(1, rounds + 1):
        calls += [
            (
                "report",
                (
                    {
                        "fit_round_start": str(_moment(10 * r)),
                        "fit_round_end": str(_moment(10 * r + 5)),
                        "fit_round_time_elapsed": 5,
                    },
                    r,
                    None,
                    None,
                ),
                {},
            ),
            (
                "report",
                ({"fit_round_metrics": {"train - accuracy": 0.5 + r / 10}}, r, None, None),
                {},
            ),
            (
                "report",
                (
                    {
                        "val - loss - aggregated": 1.0 / r,
                        "round": r,
                        "eval_round_start": str(_moment(10 * r + 6)),
                        "eval_round_end": str(_moment(10 * r + 7)),
                        "eval_round_time_elapsed": 1,
                        "fit_epoch": r,
                    },
                    r,
                    None,
                    None,
                ),
                {},
            ),
            (
                "report",
                ({"eval_round_metrics_aggregated": {"val - accuracy": 0.6}}, r, None, None),
                {},
            ),
        ]
    end = _moment(100)
    calls.append(
        (
            "report",
            (
                {
                    "fit_elapsed_time": 100,
                    "fit_end": str(end),
                    "num_rounds": rounds,
                    "host_type": "server",
                },
                None,
                None,
                None,
            ),
            {},
        )
    )
    for r in range(1, rounds + 1):  # report_centralized_eval
        calls.append(("report", ({"val - loss - centralized": 0.3}, r, None, None), {}))
    calls.append(("report", ({"shutdown": str(_moment(101))},), {}))
    calls.append(("shutdown", (), {}))
    return calls


def client_calls(rounds: int = 2, epochs: int = 2, steps: int = 3) -> list[Call]:
    """A client's run: initialize, setup's report, per-step/epoch/round reports, shutdown."""
    calls: list[Call] = [("initialize", (), {"id": "client-name", "name": "client-name"})]
    calls.append(("report", ({"host_type": "client", "initialized": str(_moment(1))},), {}))
    total_steps = 0
    total_epochs = 0
    for r in range(1, rounds + 1):
        report_data: dict[str, Any] = {"round": r}
        for _ in range(epochs):
            report_data.update({"fit_epoch": total_epochs})
            for _ in range(steps):
                report_data.update(
                    {"fit_step_losses": {"backward": 0.1 * total_steps}, "fit_step": total_steps}
                )
                calls.append(("report", (dict(report_data), r, total_epochs, total_steps), {}))
                total_steps += 1
            report_data.update({"fit_epoch_metrics": {"acc": 0.5}, "fit_epoch_losses": {"l": 1}})
            calls.append(("report", (dict(report_data), r, total_epochs, None), {}))
            total_epochs += 1
        calls.append(
            (
                "report",
                (
                    {
                        "fit_round_metrics": {"train - accuracy": 0.7},
                        "fit_round_losses": {"backward": 0.2},
                        "round": r,
                        "round_start": str(_moment(10 * r)),
                        "round_end": str(_moment(10 * r + 4)),
                        "fit_round_start": str(_moment(10 * r + 1)),
                        "fit_round_time_elapsed": 3,
                        "fit_round_end": str(_moment(10 * r + 4)),
                        "fit_step": total_steps,
                        "fit_epoch": total_epochs,
                    },
                    r,
                ),
                {},
            )
        )
        calls.append(
            (
                "report",
                (
                    {
                        "eval_round_metrics": {"val - accuracy": 0.65},
                        "eval_round_loss": 0.25,
                        "eval_round_start": str(_moment(10 * r + 5)),
                        "eval_round_time_elapsed": 1,
                        "eval_round_end": str(_moment(10 * r + 6)),
                        "fit_step": total_steps,
                        "fit_epoch": total_epochs,
                        "round": r,
                    },
                    r,
                ),
                {},
            )
        )
    calls.append(("report", ({"shutdown": str(_moment(200))},), {}))
    calls.append(("shutdown", (), {}))
    return calls


def play(reporter: Any, call: Call) -> None:
    name, args, kwargs = call
    getattr(reporter, name)(*args, **kwargs)
