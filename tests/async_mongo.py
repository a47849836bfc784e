"""An async face on a synchronous pymongo/mongomock Database, for testing async entity code.

mongomock has no async API, so this wraps a sync ``Database`` in the subset of pymongo's
``AsyncDatabase``/``AsyncCollection``/``AsyncCursor`` that ``worker.entities`` uses, with
the same shape: collection methods are coroutines, ``find`` is not (it returns a cursor),
``cursor.limit`` chains, ``cursor.to_list`` is a coroutine, and the cursor is async-iterable.

``open_async_database`` gives a real ``pymongo.AsyncMongoClient`` database instead when
``FLORIST_TEST_MONGODB_URI`` is set; it must be entered inside the running event loop.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pymongo
from pymongo.collection import Collection
from pymongo.cursor import Cursor
from pymongo.database import Database
from pymongo.results import InsertOneResult, UpdateResult

Document = dict[str, Any]


class AsyncCursorAdapter:
    """pymongo ``AsyncCursor`` subset over a sync cursor, with pymongo's semantics.

    ``limit(0)`` means no limit and ``limit(-n)`` at most ``n`` (one batch), whatever
    mongomock makes of them; ``to_list(length)`` refuses a length below 1, as pymongo's
    ``AsyncCursor.to_list`` does.
    """

    def __init__(self, cursor: Cursor[Document]) -> None:
        self._cursor = cursor
        self._limit = 0
        self._served = 0

    def limit(self, limit: int) -> AsyncCursorAdapter:
        self._limit = abs(limit)
        return self

    async def to_list(self, length: int | None = None) -> list[Document]:
        if isinstance(length, int) and length < 1:
            raise ValueError("to_list() length must be greater than 0")
        documents: list[Document] = []
        for document in self._cursor:
            if self._limit and len(documents) >= self._limit:
                break
            if length is not None and len(documents) >= length:
                break
            documents.append(document)
        return documents

    def __aiter__(self) -> AsyncCursorAdapter:
        return self

    async def __anext__(self) -> Document:
        if self._limit and self._served >= self._limit:
            raise StopAsyncIteration
        try:
            document = next(self._cursor)
        except StopIteration:
            raise StopAsyncIteration from None
        self._served += 1
        return document


class AsyncCollectionAdapter:
    """pymongo ``AsyncCollection`` subset over a sync collection."""

    def __init__(self, collection: Collection[Document]) -> None:
        self._collection = collection

    async def insert_one(self, document: Document, **kwargs: Any) -> InsertOneResult:
        return self._collection.insert_one(document, **kwargs)

    async def find_one(self, filter: Any = None, *args: Any, **kwargs: Any) -> Document | None:
        return self._collection.find_one(filter, *args, **kwargs)

    async def update_one(self, filter: Any, update: Any, **kwargs: Any) -> UpdateResult:
        return self._collection.update_one(filter, update, **kwargs)

    def find(self, *args: Any, **kwargs: Any) -> AsyncCursorAdapter:
        return AsyncCursorAdapter(self._collection.find(*args, **kwargs))


class AsyncDatabaseAdapter:
    """pymongo ``AsyncDatabase`` subset over a sync database (mongomock or pymongo)."""

    def __init__(self, database: Database[Document]) -> None:
        self._database = database
        self.name = database.name

    def get_collection(self, name: str) -> AsyncCollectionAdapter:
        return AsyncCollectionAdapter(self._database.get_collection(name))

    def __getitem__(self, name: str) -> AsyncCollectionAdapter:
        return self.get_collection(name)


@asynccontextmanager
async def open_async_database(sync_database: Database[Document]) -> AsyncIterator[Any]:
    """The async view of ``sync_database``: same data, so tests can check with either.

    With ``FLORIST_TEST_MONGODB_URI`` a real ``AsyncMongoClient`` opens the same database by
    name (the sync fixture drops it afterwards); otherwise the sync one is wrapped.
    """
    uri = os.environ.get("FLORIST_TEST_MONGODB_URI")
    if not uri:
        yield AsyncDatabaseAdapter(sync_database)
        return
    client: pymongo.AsyncMongoClient[Document] = pymongo.AsyncMongoClient(uri)
    try:
        yield client[sync_database.name]
    finally:
        await client.close()
