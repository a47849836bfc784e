"""What a real MongoDB server refuses and mongomock-ng lets through, checked at test time.

mongomock-ng accepts updates a real server rejects (an arrayFilters identifier the
update does not use, an identifier starting with an uppercase letter, two filters for
one identifier, a path both ``$set`` and ``$unset``), and it never BSON-encodes
anything. Every test database is wrapped in :class:`CheckingDatabase`, so every update
the worker sends, in every test (the property and fuzz tests' generated events
included), is checked as a server would check it; a regression in the update builder
fails the test that made it instead of passing silently.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import bson
import mongomock_ng

_IDENTIFIER = re.compile(r"[a-z][a-zA-Z0-9]*")
_POSITIONAL = re.compile(r"\$\[([^\]]*)\]")


class UpdateShapeError(AssertionError):
    """An update a real MongoDB server would refuse."""


def _paths(update: Mapping[str, Any]) -> list[tuple[str, str]]:
    paths = []
    for operator, fields in update.items():
        if not operator.startswith("$"):
            raise UpdateShapeError(f"update key {operator!r} is not an operator")
        if not isinstance(fields, Mapping) or not fields:
            raise UpdateShapeError(f"operator {operator} has no fields: {fields!r}")
        for path in fields:
            if not isinstance(path, str) or not path or path.startswith("$"):
                raise UpdateShapeError(f"bad field path {path!r} under {operator}")
            paths.append((operator, path))
    return paths


def _conflict(left: str, right: str) -> bool:
    return left == right or left.startswith(right + ".") or right.startswith(left + ".")


def check_update_shape(
    query: Mapping[str, Any],
    update: Mapping[str, Any] | Sequence[Any],
    array_filters: Sequence[Mapping[str, Any]] | None = None,
) -> None:
    """Raise :class:`UpdateShapeError` for an update a real server would refuse."""
    if not isinstance(update, Mapping) or not update:
        raise UpdateShapeError(f"update must be a non-empty operator document: {update!r}")
    paths = _paths(update)
    for index, (_op, path) in enumerate(paths):
        for _other_op, other in paths[index + 1 :]:
            if _conflict(path, other):
                raise UpdateShapeError(f"paths {path!r} and {other!r} conflict in one update")
    used = {name for _op, path in paths for name in _POSITIONAL.findall(path) if name}
    declared: list[str] = []
    for array_filter in array_filters or ():
        names = {key.split(".", 1)[0] for key in array_filter}
        if len(names) != 1:
            raise UpdateShapeError(f"an array filter must name one identifier: {array_filter!r}")
        declared.append(names.pop())
    for name in declared:
        if not _IDENTIFIER.fullmatch(name):
            raise UpdateShapeError(f"arrayFilters identifier {name!r} must start lowercase")
    if len(declared) != len(set(declared)):
        raise UpdateShapeError(f"two array filters for one identifier: {declared!r}")
    if set(declared) != used:
        raise UpdateShapeError(
            f"arrayFilters identifiers {sorted(declared)} differ from those used {sorted(used)}"
        )
    if not isinstance(query, Mapping):
        raise UpdateShapeError(f"filter must be a document: {query!r}")
    check_encodable(query, update, array_filters)


def check_encodable(*documents: Any) -> None:
    """BSON-encode what would be sent: pymongo raises here exactly as it would."""
    for document in documents:
        if document is None:
            continue
        if isinstance(document, Mapping):
            bson.encode(document)
        else:
            for item in document:
                bson.encode(item)


class CheckingCollection:
    """A collection that checks every update before the wrapped one applies it."""

    def __init__(self, collection: Any) -> None:
        self._collection = collection
        self.checked = 0

    def update_one(self, query: Any, update: Any, *args: Any, **kwargs: Any) -> Any:
        check_update_shape(query, update, kwargs.get("array_filters"))
        self.checked += 1
        return self._collection.update_one(query, update, *args, **kwargs)

    def update_many(self, query: Any, update: Any, *args: Any, **kwargs: Any) -> Any:
        check_update_shape(query, update, kwargs.get("array_filters"))
        self.checked += 1
        return self._collection.update_many(query, update, *args, **kwargs)

    def find_one(self, query: Any = None, *args: Any, **kwargs: Any) -> Any:
        check_encodable(query)
        return self._collection.find_one(query, *args, **kwargs)

    @property
    def native_bulk_write(self) -> bool:
        """Bulks go to a real server only; for mongomock-ng the store emulates them
        through :meth:`update_one` (worker/memorydb.py), which checks each update."""
        from worker.memorydb import has_native_bulk_write

        return has_native_bulk_write(self._collection)

    def bulk_write(self, requests: Sequence[Any], *args: Any, **kwargs: Any) -> Any:
        for request in requests:
            document = getattr(request, "_doc", None)
            query = getattr(request, "_filter", None)
            filters = getattr(request, "_array_filters", None)
            if document is not None and query is not None:
                check_update_shape(query, document, filters)
                self.checked += 1
        return self._collection.bulk_write(requests, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._collection, name)


class CheckingDatabase:
    """A database whose collections are :class:`CheckingCollection` s."""

    def __init__(self, database: Any) -> None:
        self._database = database
        self._collections: dict[str, CheckingCollection] = {}

    def __getitem__(self, name: str) -> CheckingCollection:
        if name not in self._collections:
            self._collections[name] = CheckingCollection(self._database[name])
        return self._collections[name]

    def get_collection(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs:
            return self._database.get_collection(name, *args, **kwargs)
        return self[name]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._database, name)


def checking_database(*jobs: Mapping[str, Any]) -> CheckingDatabase:
    """A fresh in-memory database, its writes checked as above, holding ``jobs``."""
    database = CheckingDatabase(mongomock_ng.MongoClient()["review"])
    for job in jobs:
        database["job"].insert_one(dict(job))
    return database
