"""Requeue records: what makes ``origin_id`` trustworthy.

An event's position is its entry ID, or its ``origin_id`` when it was requeued from
the dead-letter stream, so that an old snapshot put back later cannot overwrite a
newer one. Any producer could write ``origin_id`` too and so make an entry count as
older than it is (and win "first finish"). So ``dlq requeue`` gives each requeued
entry a random ``requeue_token`` and records ``token -> origin_id`` in a hash that only
operators may write (``<stream>:requeued``), in the same MULTI/EXEC as the XADD. The
worker honours ``origin_id`` only when the record for the entry's token holds exactly
that ID; anything else is ``invalid``. The producer ACL (deploy/redis-acl.conf) has no
access to the hash, and no read access to the stream, so it can neither forge a record
nor copy a token.

Records are small (a token and an ID) and are kept: replaying the stream later needs
them as much as the live worker does.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from typing import Any, Final

import redis

from worker.positions import InvalidStreamId, StreamPosition

SUFFIX: Final = ":requeued"
NO_RECORDS: Final[Mapping[str, str]] = {}


def records_key(stream: str) -> str:
    """The hash of requeue records of ``stream`` (it shares the stream's hash tag)."""
    return stream + SUFFIX


def new_token() -> str:
    return secrets.token_hex(16)


def tokens_to_check(entries: Iterable[Mapping[bytes, bytes] | None]) -> list[str]:
    """The tokens of entries that claim an ``origin_id``: the only ones to look up."""
    tokens: set[str] = set()
    for fields in entries:
        if fields and b"origin_id" in fields:
            token = fields.get(b"requeue_token")
            if token:
                tokens.add(token.decode("utf-8", "replace"))
    return sorted(tokens)


def read_records(client: redis.Redis, stream: str, tokens: list[str]) -> dict[str, str]:
    """``{token: origin_id}`` for the tokens that have a record (one HMGET)."""
    if not tokens:
        return {}
    values: Any = client.hmget(records_key(stream), tokens)
    return {
        token: value.decode() if isinstance(value, bytes) else str(value)
        for token, value in zip(tokens, values, strict=True)
        if value is not None
    }


def vouched_origin(fields: Mapping[bytes, bytes], records: Mapping[str, str]) -> str | None:
    """The ``origin_id`` an operator's record vouches for, or ``None``."""
    origin = fields.get(b"origin_id")
    token = fields.get(b"requeue_token")
    if origin is None or token is None:
        return None
    try:
        claimed = origin.decode("ascii")
        vouched = records.get(token.decode("ascii"))
    except UnicodeDecodeError:
        return None
    if vouched is None or vouched != claimed:
        return None
    try:
        return str(StreamPosition.parse(claimed))
    except InvalidStreamId:
        return None
