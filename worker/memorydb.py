"""``bulk_write`` for databases that lack it: the in-memory one (mongomock-ng) and doubles.

mongomock-ng refuses ``bulk_write`` with ``array_filters`` (NotImplementedError), which
every client-metrics update uses. For anything that is not a real pymongo
``Collection``, :class:`EmulatedBulk` runs the requests one ``update_one`` at a time,
with pymongo's documented semantics for an ordered bulk: in order, stopping at the
first write error, raising ``BulkWriteError`` with ``writeErrors`` (the index, code and
message of the failed request) and ``nMatched``/``nModified`` of those before it; a
command-level failure (network, labels, authentication) propagates as it is.
A real pymongo collection is used as it is, so the opt-in real-MongoDB test run is the
judge of the real path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pymongo import UpdateOne
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, WriteError
from pymongo.results import BulkWriteResult


def has_native_bulk_write(collection: Any) -> bool:
    """A real pymongo collection, or a wrapper that says it passes bulks to one."""
    if isinstance(collection, Collection):
        return True
    # Asked of the class: a collection's own attributes name sub-collections.
    if hasattr(type(collection), "native_bulk_write"):
        return bool(collection.native_bulk_write)
    return False


class EmulatedBulk:
    """An ordered ``bulk_write`` of ``UpdateOne`` requests through ``update_one``."""

    def __init__(self, collection: Any) -> None:
        self.collection = collection

    def bulk_write(self, requests: Sequence[UpdateOne], ordered: bool = True) -> BulkWriteResult:
        if not ordered:
            raise ValueError("only ordered bulks are emulated")
        matched = modified = 0
        for index, request in enumerate(requests):
            try:
                result = self.collection.update_one(
                    request._filter, request._doc, array_filters=request._array_filters
                )
            except WriteError as error:  # this document's refusal; command-level errors
                failed = {
                    "index": index,
                    "code": error.code,
                    "errmsg": str(error),
                    "op": {"q": request._filter, "u": request._doc},
                }
                raise BulkWriteError(_reply(matched, modified, [failed])) from error
            matched += result.matched_count
            modified += result.modified_count or 0
        return BulkWriteResult(_reply(matched, modified, []), acknowledged=True)


def _reply(matched: int, modified: int, write_errors: list[dict[str, Any]]) -> dict[str, Any]:
    """An ordered bulk's reply as pymongo reports it (updates only)."""
    return {
        "writeErrors": write_errors,
        "writeConcernErrors": [],
        "nInserted": 0,
        "nUpserted": 0,
        "nMatched": matched,
        "nModified": modified,
        "nRemoved": 0,
        "upserted": [],
    }
