"""The Job document as the worker sees it: field names, projection, and a write's shape.

The worker reads and writes only the fields named here (plus the metrics texts it
stores): the positions that guard each target, the liveness times, the status. A
:class:`Write` is one ``update_one`` (filter and update document); :func:`apply_to`
plays one on an in-memory copy of a projected document exactly as MongoDB would, which
is how a batch foresees the state each of its events meets before one ``bulk_write``
sends them all (:mod:`worker.store`). No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

SERVER_POSITION: Final = "server_metrics_position"
STATUS_POSITION: Final = "status_position"
CLIENT_POSITION: Final = "metrics_position"
# Liveness, in stream time (milliseconds since the epoch, as in entry IDs).
SERVER_LAST_EVENT: Final = "server_last_event_ms"
CLIENT_LAST_EVENT: Final = "last_event_ms"  # in each clients_info element

# The fields deciding an event reads: never the (large) metrics texts.
CLASSIFY_PROJECTION: Final = {
    "status": 1,
    SERVER_POSITION: 1,
    STATUS_POSITION: 1,
    "clients_info.uuid": 1,
    f"clients_info.{CLIENT_POSITION}": 1,
    SERVER_LAST_EVENT: 1,
    f"clients_info.{CLIENT_LAST_EVENT}": 1,
}

# A part of a document whose state decides events independently of the other parts:
# ("server",), ("status",) or ("client", uuid) (see worker.effects.groups_of).
Group = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Write:
    """One ``update_one``: the filter (``_id`` plus guard) and the update document."""

    filter: dict[str, Any]
    update: dict[str, Any]
    array_filters: list[dict[str, Any]] | None = None


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def matching_clients(document: dict[str, Any], uuid: str | None) -> list[dict[str, Any]]:
    """The ``clients_info`` elements whose uuid is exactly ``uuid`` (none when the field
    is not a list of objects)."""
    clients = document.get("clients_info")
    if not isinstance(clients, list):
        return []
    return [c for c in clients if isinstance(c, dict) and c.get("uuid") == uuid]


def _max_into(container: dict[str, Any], field: str, value: Any) -> None:
    """``$max`` as MongoDB applies it to the values the worker stores: a missing or null
    field takes the value, a number the larger, another type (above numbers in BSON's
    order) stays."""
    current = container.get(field)
    if current is None or (is_number(current) and current < value):
        container[field] = value


def apply_to(document: dict[str, Any], write: Write) -> None:
    """Apply ``write`` to an in-memory (projected) copy of its document, as MongoDB would.
    Knows the shapes :mod:`worker.effects` builds: top-level ``$set``/``$max``,
    and ``clients_info.$[client].<field>`` with the one array filter on ``client.uuid``."""
    uuid = (write.array_filters or [{}])[0].get("client.uuid")
    for operator in ("$set", "$max"):
        for path, value in write.update.get(operator, {}).items():
            if path.startswith("clients_info.$[client]."):
                field = path.removeprefix("clients_info.$[client].")
                targets = matching_clients(document, uuid)
            else:
                field, targets = path, [document]
            for target in targets:
                if operator == "$set":
                    target[field] = value
                else:
                    _max_into(target, field, value)


def group_state(document: dict[str, Any] | None, group: Group) -> tuple[Any, ...] | None:
    """What ``document`` holds for one part (its guard positions and liveness): equal
    states mean the same decisions for every event of that part."""
    if document is None:
        return None
    if group[0] == "server":
        return (document.get(SERVER_POSITION), document.get(SERVER_LAST_EVENT))
    if group[0] == "status":
        return (document.get("status"), document.get(STATUS_POSITION))
    return tuple(
        (member.get(CLIENT_POSITION), member.get(CLIENT_LAST_EVENT))
        for member in matching_clients(document, group[1])
    )
