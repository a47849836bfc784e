"""FLorist's Job entities: the documents the API stores and the worker updates.

The models mirror FLorist's own ``Job``/``ClientInfo`` so that a document written by either
side loads on the other. Every write is one ``update_one`` on one job document, checked with
:func:`assert_updated_successfully`, so a missing job or client is an error, not a no-op.
"""

from __future__ import annotations

import uuid
from enum import Enum
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.database import Database
from pymongo.results import UpdateResult

from worker.jsontext import dumps_strict

JOB_COLLECTION: Final = "job"

Document = dict[str, Any]


class _ListedEnum(Enum):
    """An enum whose ``list()`` gives its values, as FLorist's API and UI expect."""

    @classmethod
    def list(cls) -> list[str]:
        return [member.value for member in cls]


class JobStatus(_ListedEnum):
    """Where a job is in its life; the finished ones are final."""

    NOT_STARTED = "NOT_STARTED"
    IN_PROGRESS = "IN_PROGRESS"
    FINISHED_WITH_ERROR = "FINISHED_WITH_ERROR"
    FINISHED_SUCCESSFULLY = "FINISHED_SUCCESSFULLY"


class Model(_ListedEnum):
    """Models a FLorist server can train."""

    MNIST = "MNIST"


class Client(_ListedEnum):
    """FL client implementations a FLorist client can run."""

    MNIST = "MNIST"


class ConfigParser(_ListedEnum):
    """How a job's ``server_config`` text is parsed."""

    BASIC = "BASIC"


class UpdateNotApplied(AssertionError):
    """An update that did not change exactly one document as it should have.

    An ``AssertionError`` for FLorist compatibility, but raised explicitly so that
    ``python -O`` (which strips ``assert`` statements) cannot silence it.
    """


def assert_updated_successfully(update_result: UpdateResult) -> None:
    """Raise :class:`UpdateNotApplied` unless the update matched exactly one document.

    ``nModified`` may be 0: setting a field to the value it already has is not a failure.
    """
    raw = update_result.raw_result
    if raw is None:
        raise UpdateNotApplied("update was not acknowledged: no raw result to check")
    n = raw.get("n")
    n_modified = raw.get("nModified")
    ok = raw.get("ok")
    if n == 1 and ok == 1 and n_modified in (0, 1):
        return
    raise UpdateNotApplied(
        "update was not applied to exactly one document: expected n=1, ok=1, nModified=0|1; "
        f"got n={n!r}, ok={ok!r}, nModified={n_modified!r}"
    )


def _new_id() -> str:
    return str(uuid.uuid4())


class ClientInfo(BaseModel):
    """One FL client of a job; ``uuid`` is how its metrics events name it."""

    model_config = ConfigDict(
        populate_by_name=True,
        extra="ignore",
        json_schema_extra={
            "example": {
                "_id": "client-info-0",
                "client": "MNIST",
                "service_address": "localhost:8001",
                "data_path": "path/to/data/0",
                "redis_host": "localhost",
                "redis_port": "6379",
                "uuid": "0c316680-1375-4e07-84c3-a732a2e6d03f",
                "metrics": '{"host_type": "client", "initialized": "2024-10-10 15:05:59.025693"}',
            }
        },
    )

    id: str = Field(default_factory=_new_id, alias="_id")
    client: Client
    service_address: str
    data_path: str
    redis_host: str
    redis_port: str
    uuid: str | None = None
    metrics: str | None = None


class Job(BaseModel):
    """A FLorist training job: one server, its clients, and their metrics as JSON text."""

    model_config = ConfigDict(
        populate_by_name=True,
        extra="ignore",  # the worker keeps bookkeeping fields (positions) on the document
        json_schema_extra={
            "example": {
                "_id": "066de609-b04a-4b30-b46c-32537c7f1f6e",
                "status": "NOT_STARTED",
                "model": "MNIST",
                "server_address": "localhost:8080",
                "server_config": '{"n_server_rounds": 3, "batch_size": 8, "local_epochs": 1}',
                "config_parser": "BASIC",
                "server_uuid": "d73243cf-8b89-473b-9607-8cd0253a101d",
                "server_metrics": '{"host_type": "server", "fit_start": "2024-10-10 15:05:59"}',
                "redis_host": "localhost",
                "redis_port": "6379",
                "clients_info": [
                    {
                        "_id": "client-info-0",
                        "client": "MNIST",
                        "service_address": "localhost:8001",
                        "data_path": "path/to/data/0",
                        "redis_host": "localhost",
                        "redis_port": "6379",
                        "uuid": "0c316680-1375-4e07-84c3-a732a2e6d03f",
                        "metrics": None,
                    }
                ],
                "error_message": None,
            }
        },
    )

    id: str = Field(default_factory=_new_id, alias="_id")
    status: JobStatus = JobStatus.NOT_STARTED
    model: Model | None = None
    server_address: str | None = None
    server_config: str | None = None
    config_parser: ConfigParser | None = None
    server_uuid: str | None = None
    server_metrics: str | None = None
    redis_host: str | None = None
    redis_port: str | None = None
    clients_info: list[ClientInfo] | None = None
    error_message: str | None = None

    def to_document(self) -> Document:
        """The document as stored: aliases (``_id``) and enum values, as FLorist writes it."""
        return self.model_dump(by_alias=True, mode="json")

    async def create(self, database: AsyncDatabase[Document]) -> str:
        """Insert this job as a new document and return its id."""
        result = await database[JOB_COLLECTION].insert_one(self.to_document())
        return str(result.inserted_id)

    @classmethod
    async def find_by_id(cls, job_id: str, database: AsyncDatabase[Document]) -> Job | None:
        """The job with this id, or None when there is none."""
        document = await database[JOB_COLLECTION].find_one({"_id": job_id})
        return None if document is None else cls.model_validate(document)

    @classmethod
    async def find_by_status(
        cls, status: JobStatus, limit: int, database: AsyncDatabase[Document]
    ) -> list[Job]:
        """Up to ``limit`` jobs in ``status``."""
        cursor = database[JOB_COLLECTION].find({"status": status.value}).limit(limit)
        return [cls.model_validate(document) for document in await cursor.to_list()]

    async def set_status(self, status: JobStatus, database: AsyncDatabase[Document]) -> None:
        """Store a new status (no transition rules here: the worker's consumer applies them)."""
        result = await database[JOB_COLLECTION].update_one(
            {"_id": self.id}, {"$set": {"status": status.value}}
        )
        assert_updated_successfully(result)
        self.status = status

    async def set_uuids(
        self, server_uuid: str, client_uuids: list[str], database: AsyncDatabase[Document]
    ) -> None:
        """Store the uuids the server and each client (in ``clients_info`` order) report under.

        Only the ``uuid`` fields are set, so metrics and bookkeeping in the elements survive;
        the ``$size`` guard refuses a stored ``clients_info`` of another length.
        """
        have = 0 if self.clients_info is None else len(self.clients_info)
        if self.clients_info is None or have != len(client_uuids):
            raise ValueError(
                f"job {self.id!r} has {have} clients_info but {len(client_uuids)} client uuids "
                "were given; they must match one to one"
            )
        changes: Document = {"server_uuid": server_uuid}
        changes.update(
            {f"clients_info.{index}.uuid": value for index, value in enumerate(client_uuids)}
        )
        result = await database[JOB_COLLECTION].update_one(
            {"_id": self.id, "clients_info": {"$size": have}}, {"$set": changes}
        )
        assert_updated_successfully(result)
        self.server_uuid = server_uuid
        for client_info, value in zip(self.clients_info, client_uuids, strict=True):
            client_info.uuid = value

    def set_status_sync(self, status: JobStatus, database: Database[Document]) -> None:
        """:meth:`set_status` for the worker, which runs on synchronous pymongo."""
        result = database[JOB_COLLECTION].update_one(
            {"_id": self.id}, {"$set": {"status": status.value}}
        )
        assert_updated_successfully(result)
        self.status = status

    def set_server_metrics(self, metrics: dict[str, Any], database: Database[Document]) -> None:
        """Store the server's metrics snapshot as strict JSON text (what the UI parses)."""
        text = dumps_strict(metrics)
        result = database[JOB_COLLECTION].update_one(
            {"_id": self.id}, {"$set": {"server_metrics": text}}
        )
        assert_updated_successfully(result)
        self.server_metrics = text

    def set_client_metrics(
        self, client_uuid: str, metrics: dict[str, Any], database: Database[Document]
    ) -> None:
        """Store one client's metrics snapshot as strict JSON text.

        The element is matched by ``uuid`` equality in the filter and set through the
        positional ``$``, so only an exact uuid matches and the rest of the element stays.
        """
        text = dumps_strict(metrics)
        result = database[JOB_COLLECTION].update_one(
            {"_id": self.id, "clients_info.uuid": client_uuid},
            {"$set": {"clients_info.$.metrics": text}},
        )
        try:
            assert_updated_successfully(result)
        except UpdateNotApplied as error:
            raise UpdateNotApplied(
                f"no client with uuid {client_uuid!r} in job {self.id!r}: {error}"
            ) from error
        for client_info in self.clients_info or []:
            if client_info.uuid == client_uuid:
                client_info.metrics = text
