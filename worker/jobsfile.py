"""Jobs for the in-memory database, read from a file: ``florist-worker run --jobs FILE``.

With ``memory://`` the worker's database lives inside its own process, where nothing else
(FLorist's API, a script) can create a job: events that other processes publish would
wait as ``unknown_job`` until they are dead-lettered. A jobs file fills that database at
start with FLorist-shaped ``Job`` documents (:class:`worker.entities.Job`), given as a
JSON array, a single JSON object, or JSON lines (one document per line). The worker then
applies events that name a job by its ``_id``, its ``server_uuid`` or a client's ``uuid``.

Every document is checked before anything is stored: a file that cannot be read, is not
JSON, holds a document the ``Job`` model refuses, or names an ``_id``, server uuid or
client uuid twice (across jobs) raises :class:`JobsFileError`, whose message is one line
naming the file and the problem. ``worker/samples/jobs.json`` is an example: the sample
job, whose uuids the sample run and the README's publisher use.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pymongo.database import Database

from worker.entities import JOB_COLLECTION, Job

__all__ = ["JobsFileError", "ServedJob", "current_jobs", "load_jobs", "read_jobs"]


class JobsFileError(ValueError):
    """A jobs file that cannot be loaded; the message is one line naming the file."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"jobs file {path}: {problem}")


@dataclass(frozen=True, slots=True)
class ServedJob:
    """A job the worker serves, and the names events may give it."""

    job_id: str
    status: str
    server_uuid: str | None
    client_uuids: tuple[str, ...]


def read_jobs(path: Path) -> list[Job]:
    """The jobs in ``path``, each checked by the ``Job`` model; raises :class:`JobsFileError`."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        problem = error.strerror if isinstance(error, OSError) else str(error)
        raise JobsFileError(path, f"cannot be read ({problem})") from None
    documents = _documents(path, text)
    if not documents:
        raise JobsFileError(path, "holds no job")
    jobs = [_job(path, number, document) for number, document in enumerate(documents, 1)]
    _refuse_repeated_names(path, jobs)
    return jobs


def load_jobs(database: Database[Any], jobs: Iterable[Job]) -> list[ServedJob]:
    """Insert ``jobs`` into the job collection; what each is and how events may name it."""
    jobs = list(jobs)
    if jobs:
        database[JOB_COLLECTION].insert_many([job.to_document() for job in jobs])
    return [served(job) for job in jobs]


def current_jobs(database: Database[Any], served: Iterable[ServedJob]) -> list[Job]:
    """The served jobs as the database holds them now (those still there)."""
    collection = database[JOB_COLLECTION]
    documents = (collection.find_one({"_id": job.job_id}) for job in served)
    return [Job.model_validate(document) for document in documents if document is not None]


def served(job: Job) -> ServedJob:
    clients = tuple(info.uuid for info in job.clients_info or () if info.uuid is not None)
    return ServedJob(job.id, job.status.value, job.server_uuid, clients)


def _documents(path: Path, text: str) -> list[Any]:
    """The file's documents: a JSON array, one JSON value, or else JSON lines."""
    try:
        whole = json.loads(text)
    except json.JSONDecodeError as error:
        if text.lstrip().startswith("["):
            raise JobsFileError(path, f"not JSON: {error}") from None
        return _json_lines(path, text)
    except RecursionError:
        raise JobsFileError(path, "nested too deeply") from None
    if isinstance(whole, list):
        return whole
    if isinstance(whole, dict):
        return [whole]
    raise JobsFileError(
        path, "expected a JSON array of Job documents, one Job object, or JSON lines"
    )


def _json_lines(path: Path, text: str) -> list[Any]:
    documents = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            documents.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise JobsFileError(path, f"line {number}: not JSON: {error.msg}") from None
        except RecursionError:
            raise JobsFileError(path, f"line {number}: nested too deeply") from None
    return documents


def _job(path: Path, number: int, document: Any) -> Job:
    if not isinstance(document, dict):
        raise JobsFileError(path, f"job {number}: not a JSON object")
    try:
        return Job.model_validate(document)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc']) or 'document'}: {item['msg']}"
            for item in error.errors(include_url=False)
        )
        named = f" (_id {document['_id']!r})" if "_id" in document else ""
        raise JobsFileError(path, f"job {number}{named}: {problems}") from None


def _refuse_repeated_names(path: Path, jobs: list[Job]) -> None:
    """An ``_id``, server uuid or client uuid in two jobs would make events ambiguous."""
    names = [("_id", job.id) for job in jobs]
    for job in jobs:
        names += [("server_uuid", job.server_uuid)] if job.server_uuid is not None else []
        names += [("client uuid", uuid) for uuid in set(served(job).client_uuids)]
    repeated = [f"{kind} {value!r}" for (kind, value), count in Counter(names).items() if count > 1]
    if repeated:
        raise JobsFileError(path, f"in more than one job: {', '.join(repeated)}")
