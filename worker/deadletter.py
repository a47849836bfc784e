"""The dead-letter stream: look at dead letters, put them back, or throw them away.

A dead letter is the original entry plus bookkeeping (``dead_reason``,
``dead_error``, ``origin_id``, ``origin_stream``, ``deliveries``, ``dead_at``; the
layout is :mod:`worker.letters`). Requeueing writes the original field map back to
the END of the events stream exactly as it was received, except for two fields the
requeue sets: ``origin_id`` (the ID the event had first) and ``requeue_token``, whose
record in ``<stream>:requeued`` vouches for that ``origin_id`` on exactly the entry
written (see :mod:`worker.requeues`). The worker's guards compare ``origin_id``, not the new ID, so
a requeued old snapshot cannot overwrite a newer one that was applied meanwhile.

Each page of requeued entries is one MULTI/EXEC of HSET (the record), XADD (events
stream) and XDEL (dead-letter stream): an entry is never in both places nor in
neither, and never without its record. Two operators requeueing the same letter at
once can add it twice; the second copy has the same ``origin_id`` and ends as a
``duplicate``. Only commands the worker's ACL user has are used (XRANGE, XADD, XDEL,
HSET, MULTI/EXEC): no WATCH, DEL or scripts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import redis
import structlog

from worker import requeues
from worker.cluster import check_client_names
from worker.letters import original_fields
from worker.positions import InvalidStreamId, StreamPosition
from worker.settings import Settings

log = structlog.get_logger(__name__)

PAGE_SIZE: Final = 100
_COUNT: Final = re.compile("[0-9]{1,18}")  # ASCII digits: int() refuses some isdigit() text


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _raw(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


@dataclass(frozen=True, slots=True)
class DeadLetterEntry:
    """One entry of the dead-letter stream, its fields exactly as stored."""

    id: str
    raw: dict[bytes, bytes]

    def field(self, name: str) -> str | None:
        value = self.raw.get(name.encode())
        return None if value is None else _text(value)

    def fields(self) -> dict[str, str]:
        """Every field as text (bytes that are not UTF-8 shown with replacements)."""
        return {_text(key): _text(value) for key, value in self.raw.items()}

    def original_fields(self) -> dict[bytes, bytes]:
        """The entry's field map exactly as it was received (see :mod:`worker.letters`)."""
        return original_fields(self.raw)

    @property
    def claimed_origin(self) -> str | None:
        """An ``origin_id`` the entry carried that no requeue record vouched for (an entry
        requeued by a version before the records, or a forgery), if it is a stream ID
        before the position the letter keeps; ``None`` otherwise."""
        raw = self.raw.get(b"dead_field:origin_id")
        kept = self.origin_id
        if raw is None or kept is None:
            return None
        try:
            claimed = canonical_id(_text(raw))
        except InvalidStreamId:
            return None
        return claimed if StreamPosition.parse(claimed) < StreamPosition.parse(kept) else None

    def requeued_fields(
        self, token: str, *, vouch_claimed_origin: bool = False
    ) -> dict[bytes, bytes]:
        """The entry as it goes back on the events stream: the original fields, with
        ``origin_id`` (the first position: the one the letter keeps, or with
        ``vouch_claimed_origin`` the :attr:`claimed_origin`) and the ``requeue_token``
        vouching for it."""
        fields = self.original_fields()
        origin = self.claimed_origin if vouch_claimed_origin else None
        fields[b"origin_id"] = (origin or self.origin_id or self.id).encode()
        fields[requeues.TOKEN_FIELD] = token.encode()
        return fields

    @property
    def reason(self) -> str | None:
        return self.field("dead_reason")

    @property
    def error(self) -> str | None:
        return self.field("dead_error")

    @property
    def job_id(self) -> str | None:
        return self.field("job_id")

    @property
    def type(self) -> str | None:
        return self.field("type")

    @property
    def origin_id(self) -> str | None:
        """The position the event keeps when requeued (``None`` if missing or malformed)."""
        text = self.field("origin_id")
        if text is None:
            return None
        try:
            return canonical_id(text)
        except InvalidStreamId:
            return None

    @property
    def deliveries(self) -> int | None:
        text = self.field("deliveries")
        return int(text) if text is not None and _COUNT.fullmatch(text) else None

    @property
    def dead_at(self) -> datetime | None:
        text = self.field("dead_at")
        if text is None:
            return None
        try:
            return datetime.fromisoformat(text)
        except ValueError:
            return None

    def age(self, now: datetime) -> timedelta | None:
        """Time since it was dead-lettered (``now`` must be timezone-aware)."""
        dead_at = self.dead_at
        if dead_at is None or dead_at.tzinfo is None:
            return None
        return now - dead_at


def _letters(raw: Iterable[tuple[Any, Any]]) -> list[DeadLetterEntry]:
    return [
        DeadLetterEntry(_text(entry_id), {_raw(k): _raw(v) for k, v in (fields or {}).items()})
        for entry_id, fields in raw
    ]


def canonical_id(entry_id: str) -> str:
    """``entry_id`` as Redis writes it; raises ``InvalidStreamId`` for anything else."""
    return str(StreamPosition.parse(entry_id))


def iter_dead_letters(
    redis_client: redis.Redis,
    *,
    reason: str | None = None,
    settings: Settings | None = None,
    page_size: int = PAGE_SIZE,
) -> Iterator[list[DeadLetterEntry]]:
    """Pages of dead letters, oldest first, optionally only those of one ``reason``."""
    stream = (settings or Settings()).dead_stream
    cursor = "-"
    while True:
        raw: Any = redis_client.xrange(stream, cursor, "+", count=page_size)
        if not raw:
            return
        letters = _letters(raw)
        selected = [letter for letter in letters if reason is None or letter.reason == reason]
        if selected:
            yield selected
        if len(raw) < page_size:
            return
        cursor = "(" + letters[-1].id


def list_dead_letters(
    redis_client: redis.Redis,
    *,
    reason: str | None = None,
    job_id: str | None = None,
    limit: int | None = None,
    settings: Settings | None = None,
) -> list[DeadLetterEntry]:
    """Dead letters, oldest first, filtered by ``reason`` and ``job_id``, at most ``limit``."""
    found: list[DeadLetterEntry] = []
    for page in iter_dead_letters(redis_client, reason=reason, settings=settings):
        for letter in page:
            if job_id is None or letter.job_id == job_id:
                found.append(letter)
                if limit is not None and len(found) >= limit:
                    return found
    return found


def get_dead_letter(
    redis_client: redis.Redis, entry_id: str, *, settings: Settings | None = None
) -> DeadLetterEntry | None:
    """The dead letter with this ID, or ``None``."""
    entry_id = canonical_id(entry_id)
    stream = (settings or Settings()).dead_stream
    raw: Any = redis_client.xrange(stream, entry_id, entry_id, count=1)
    letters = _letters(raw)
    return letters[0] if letters else None


def find_dead_letters(
    redis_client: redis.Redis, ids: Sequence[str], *, settings: Settings | None = None
) -> tuple[list[DeadLetterEntry], list[str]]:
    """The dead letters with these IDs in stream order, and the IDs not found."""
    settings = settings or Settings()
    wanted = list(dict.fromkeys(canonical_id(entry_id) for entry_id in ids))
    pipe = redis_client.pipeline(transaction=False)
    for entry_id in wanted:
        pipe.xrange(settings.dead_stream, entry_id, entry_id, count=1)
    found: list[DeadLetterEntry] = []
    missing: list[str] = []
    for entry_id, raw in zip(wanted, pipe.execute(), strict=True):
        letters = _letters(raw)
        if letters:
            found.append(letters[0])
        else:
            missing.append(entry_id)
    found.sort(key=lambda letter: StreamPosition.parse(letter.id))
    return found, missing


def _selected_pages(
    redis_client: redis.Redis,
    ids: Sequence[str] | None,
    reason: str | None,
    settings: Settings,
) -> Iterator[list[DeadLetterEntry]]:
    if ids is None:
        yield from iter_dead_letters(redis_client, reason=reason, settings=settings)
        return
    found, _missing = find_dead_letters(redis_client, ids, settings=settings)
    selected = [letter for letter in found if reason is None or letter.reason == reason]
    for offset in range(0, len(selected), PAGE_SIZE):
        yield selected[offset : offset + PAGE_SIZE]


def requeue_letters(
    redis_client: redis.Redis,
    letters: Sequence[DeadLetterEntry],
    settings: Settings,
    *,
    vouch_claimed_origin: bool = False,
) -> list[str]:
    """Move ``letters`` to the end of the events stream in one MULTI/EXEC; new IDs.

    A letter with an unvouched :attr:`~DeadLetterEntry.claimed_origin` is left where it
    is (with a warning) unless ``vouch_claimed_origin``: requeued at its own later ID,
    an old snapshot could overwrite a newer one; requeued at the claimed ID, a forgery
    would be honoured. Only an operator who knows which it is can choose."""
    held = [letter for letter in letters if letter.claimed_origin and not vouch_claimed_origin]
    for letter in held:
        log.warning(
            "dead letter not requeued: it claims an origin_id no requeue record vouched for "
            "(requeued by an older version, or forged); requeue it with --vouch-origin to "
            "keep that first position, or drop it",
            id=letter.id,
            claimed_origin=letter.claimed_origin,
        )
    letters = [letter for letter in letters if letter not in held]
    if not letters:
        return []
    check_client_names(redis_client, settings.stream, settings.dead_stream, settings.redis_cluster)
    pipe = redis_client.pipeline(transaction=True)
    records_key = requeues.records_key(settings.stream)
    for letter in letters:
        token = requeues.new_token()
        fields: Any = letter.requeued_fields(token, vouch_claimed_origin=vouch_claimed_origin)
        pipe.hset(records_key, token, requeues.RequeueRecord.of(fields).text())
        pipe.xadd(settings.stream, fields)
        pipe.xdel(settings.dead_stream, letter.id)
    replies = pipe.execute()
    new_ids = [_text(reply) for reply in replies[1::3]]
    for letter, new_id, deleted in zip(letters, new_ids, replies[2::3], strict=True):
        if not deleted:
            log.warning(
                "dead letter was removed by someone else while being requeued; "
                "a second copy is harmless (same origin_id)",
                id=letter.id,
                new_id=new_id,
            )
        log.info("dead letter requeued", id=letter.id, new_id=new_id, origin_id=letter.origin_id)
    return new_ids


def requeue(
    redis_client: redis.Redis,
    ids: Sequence[str] | None = None,
    *,
    reason: str | None = None,
    settings: Settings | None = None,
    vouch_claimed_origin: bool = False,
) -> int:
    """Put dead letters back on the events stream (``None`` ids: all of them, or all of
    one ``reason``); returns how many were requeued. Unknown IDs are skipped, and so are
    letters with an unvouched claimed ``origin_id`` unless ``vouch_claimed_origin``
    (see :func:`requeue_letters`)."""
    settings = settings or Settings()
    moved = 0
    for page in _selected_pages(redis_client, ids, reason, settings):
        moved += len(
            requeue_letters(redis_client, page, settings, vouch_claimed_origin=vouch_claimed_origin)
        )
    return moved


def drop(
    redis_client: redis.Redis,
    ids: Sequence[str] | None,
    *,
    reason: str | None = None,
    settings: Settings | None = None,
) -> int:
    """Delete dead letters for good (``None`` ids: all of them, or all of one
    ``reason``; no default, so that dropping everything is always explicit)."""
    settings = settings or Settings()
    dropped = 0
    for page in _selected_pages(redis_client, ids, reason, settings):
        dropped += int(redis_client.xdel(settings.dead_stream, *(letter.id for letter in page)))
    return dropped
