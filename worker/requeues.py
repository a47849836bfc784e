"""Requeue records: what makes ``origin_id`` trustworthy.

An event's position is its entry ID, or its ``origin_id`` when it was requeued from
the dead-letter stream, so that an old snapshot put back later cannot overwrite a
newer one. Any producer could write ``origin_id`` too and so make an entry count as
older than it is (and win "first finish"). So ``dlq requeue`` gives each requeued
entry a random ``requeue_token`` and records, under that token, the ``origin_id`` and a
digest of the whole field map it wrote (its job, its type, its content: every field
but the token itself), in a hash that only operators may write (``<stream>:requeued``),
in the same MULTI/EXEC as the XADD. The worker honours ``origin_id`` only when the
record for the entry's token holds exactly that ID and the digest of exactly that
entry: a token vouches for the one entry the requeue wrote, so copied onto another
entry (another job, another status, other metrics) with its ``origin_id`` it vouches
for nothing, and the entry is ``invalid``. The producer ACL (deploy/redis-acl.conf)
has no access to the hash, and no read access to the stream, so it can neither forge a
record nor copy a token in the first place.

A record is one text value, ``<origin_id> sha256:<hex digest>``. A record of a version
before the digest holds the ID alone and vouches for nothing: such an entry is
dead-lettered as ``invalid`` with its claimed ``origin_id`` kept, and ``dlq requeue
--vouch-origin`` puts it back at that position with a record of today's form.

Records are small and are kept: replaying the stream later needs them as much as the
live worker does, and they vouch for the same entries then.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import redis

from worker.positions import InvalidStreamId, StreamPosition

SUFFIX: Final = ":requeued"
NO_RECORDS: Final[Mapping[str, str]] = {}
TOKEN_FIELD: Final = b"requeue_token"
_DIGEST_PREFIX: Final = "sha256:"


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
            token = fields.get(TOKEN_FIELD)
            if token:
                tokens.add(token.decode("utf-8", "replace"))
    return sorted(tokens)


def read_records(client: redis.Redis, stream: str, tokens: list[str]) -> dict[str, str]:
    """``{token: record}`` for the tokens that have a record (one HMGET); a record is
    ``"<origin_id> sha256:<digest>"`` (:func:`vouched_origin` reads it)."""
    if not tokens:
        return {}
    values: Any = client.hmget(records_key(stream), tokens)
    return {
        token: value.decode() if isinstance(value, bytes) else str(value)
        for token, value in zip(tokens, values, strict=True)
        if value is not None
    }


def digest_of(fields: Mapping[bytes, bytes]) -> str:
    """The digest a record keeps of an entry: every field but ``requeue_token``, names
    and values, whatever their order (each length-prefixed, so no two maps share one)."""
    digest = hashlib.sha256()
    for name, value in sorted(fields.items()):
        if name != TOKEN_FIELD:
            digest.update(b"%d:%s%d:%s" % (len(name), name, len(value), value))
    return _DIGEST_PREFIX + digest.hexdigest()


@dataclass(frozen=True, slots=True)
class RequeueRecord:
    """What ``dlq requeue`` records under a token: the entry's first ID and its digest."""

    origin_id: str
    digest: str

    @classmethod
    def of(cls, fields: Mapping[bytes, bytes]) -> RequeueRecord:
        """The record that vouches for ``fields``, an entry as the requeue writes it."""
        return cls(fields[b"origin_id"].decode("ascii"), digest_of(fields))

    @classmethod
    def parse(cls, text: str) -> RequeueRecord | None:
        """The record stored as ``text``; ``None`` for one without a digest (written by
        a version before it) or anything else."""
        origin_id, _, digest = text.partition(" ")
        if not digest.startswith(_DIGEST_PREFIX):
            return None
        return cls(origin_id, digest)

    def text(self) -> str:
        """The record as stored in the hash."""
        return f"{self.origin_id} {self.digest}"

    def vouches_for(self, fields: Mapping[bytes, bytes]) -> bool:
        """``fields`` is the very entry this record was made for."""
        return hmac.compare_digest(self.digest, digest_of(fields))


def vouched_origin(fields: Mapping[bytes, bytes], records: Mapping[str, str]) -> str | None:
    """The ``origin_id`` an operator's record vouches for, or ``None``: the record of the
    entry's token must hold that ID and the digest of this very entry."""
    origin = fields.get(b"origin_id")
    token = fields.get(TOKEN_FIELD)
    if origin is None or token is None:
        return None
    try:
        claimed = origin.decode("ascii")
        stored = records.get(token.decode("ascii"))
    except UnicodeDecodeError:
        return None
    record = RequeueRecord.parse(stored) if stored is not None else None
    if record is None or record.origin_id != claimed or not record.vouches_for(fields):
        return None
    try:
        return str(StreamPosition.parse(claimed))
    except InvalidStreamId:
        return None
