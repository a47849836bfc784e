"""FLorist's Job entities: the documents the API stores and the worker updates.

The models mirror FLorist's own ``Job``/``ClientInfo`` so that a document written by either
side loads on the other, and the methods behave like those of FLorist's
``florist/api/db/entities.py`` (at the revision this project started from): the same
parameter names, the same ``AssertionError`` messages (subclasses of it, raised explicitly so
that ``python -O`` cannot strip them), metrics stored as ``json.dumps`` writes them, and the
constants ``JOB_COLLECTION_NAME`` and ``MAX_RECORDS_TO_FETCH``. Every write is one
``update_one`` on one job document, checked with :func:`assert_updated_successfully`, so a
missing job or client is an error, not a no-op. The README lists where this module
deliberately differs from FLorist's.
"""

from __future__ import annotations

import uuid
from enum import Enum
from typing import Any, Final

from florist_events.jsontext import dumps_compatible
from pydantic import BaseModel, ConfigDict, Field
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.database import Database
from pymongo.results import UpdateResult

JOB_COLLECTION_NAME: Final = "job"
JOB_COLLECTION: Final = JOB_COLLECTION_NAME  # the name the worker's own modules use
MAX_RECORDS_TO_FETCH: Final = 1000

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


class EntityAssertionError(AssertionError):
    """A check of this module failed: raised where FLorist's module fails an ``assert``.

    An ``AssertionError`` for FLorist compatibility (its routes answer 400 for one), but
    raised explicitly, so that ``python -O`` (which strips ``assert`` statements) cannot
    silence it.
    """


class UpdateNotApplied(EntityAssertionError):
    """An update that did not change exactly one document as it should have."""


def assert_updated_successfully(update_result: UpdateResult) -> None:
    """Raise :class:`UpdateNotApplied` unless the update matched exactly one document.

    FLorist's checks and messages, in its order: ``n`` is 1, ``nModified`` is 1 or 0
    (setting a field to the value it already has is not a failure), ``ok`` is 1.
    """
    raw = update_result.raw_result
    if not isinstance(raw, dict):
        raise UpdateNotApplied(f"UpdateResult's raw_result is not a dict ({update_result})")
    if raw.get("n") != 1:
        raise UpdateNotApplied(f"UpdateResult's 'n' is not 1 ({update_result})")
    if raw.get("nModified") not in [1, 0]:
        raise UpdateNotApplied(f"UpdateResult's 'nModified' is not 1 or 0 ({update_result})")
    if raw.get("ok") != 1:
        raise UpdateNotApplied(f"UpdateResult's 'ok' is not 1 ({update_result})")


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
        result = await database[JOB_COLLECTION_NAME].insert_one(self.to_document())
        return str(result.inserted_id)

    @classmethod
    async def find_by_id(cls, job_id: str, database: AsyncDatabase[Document]) -> Job | None:
        """The job with this id, or None when there is none."""
        document = await database[JOB_COLLECTION_NAME].find_one({"_id": job_id})
        return None if document is None else cls.model_validate(document)

    @classmethod
    async def find_by_status(
        cls, status: JobStatus, limit: int, database: AsyncDatabase[Document]
    ) -> list[Job]:
        """Up to ``limit`` jobs in ``status``, with the results FLorist's ``to_list(limit)`` gives.

        ``limit`` 0 gives no job, a negative one raises ``ValueError`` and one that is no
        ``int`` raises ``TypeError``, as in FLorist (Motor's ``to_list``). Neither is passed
        on to MongoDB, where ``limit(0)`` would mean no limit and a negative one a single
        batch.
        """
        if not isinstance(limit, int):
            raise TypeError(f"length must be an int, not {limit!r}")
        if limit < 0:
            raise ValueError("length must be non-negative")
        if limit == 0:
            return []
        value = JobStatus(status).value
        cursor = database[JOB_COLLECTION_NAME].find({"status": value}).limit(limit)
        return [cls.model_validate(document) for document in await cursor.to_list()]

    async def set_status(self, status: JobStatus, database: AsyncDatabase[Document]) -> None:
        """Store a new status (no transition rules here: the worker's consumer applies them)."""
        result = await database[JOB_COLLECTION_NAME].update_one(
            {"_id": self.id}, {"$set": {"status": status.value}}
        )
        assert_updated_successfully(result)
        self.status = status

    async def set_uuids(
        self, server_uuid: str, client_uuids: list[str], database: AsyncDatabase[Document]
    ) -> None:
        """Store the uuids the server and each client (in ``clients_info`` order) report under.

        One update sets them all (FLorist makes one per uuid): only the ``uuid`` fields are
        set, so metrics and bookkeeping in the elements survive, and a ``$size`` guard
        refuses a stored ``clients_info`` of another length.
        """
        if self.clients_info is None or len(self.clients_info) != len(client_uuids):
            have = "None" if self.clients_info is None else len(self.clients_info)
            raise EntityAssertionError(
                "self.clients_info and client_uuids must have the same length "
                f"({have}!={len(client_uuids)})."
            )
        changes: Document = {"server_uuid": server_uuid}
        changes.update(
            {f"clients_info.{index}.uuid": value for index, value in enumerate(client_uuids)}
        )
        result = await database[JOB_COLLECTION_NAME].update_one(
            {"_id": self.id, "clients_info": {"$size": len(client_uuids)}}, {"$set": changes}
        )
        assert_updated_successfully(result)
        self.server_uuid = server_uuid
        for client_info, value in zip(self.clients_info, client_uuids, strict=True):
            client_info.uuid = value

    def set_status_sync(self, status: JobStatus, database: Database[Document]) -> None:
        """:meth:`set_status` for synchronous pymongo (FLorist's listener threads, the worker)."""
        result = database[JOB_COLLECTION_NAME].update_one(
            {"_id": self.id}, {"$set": {"status": status.value}}
        )
        assert_updated_successfully(result)
        self.status = status

    def set_server_metrics(self, server_metrics: Any, database: Database[Document]) -> None:
        """Store the server's metrics snapshot as ``json.dumps`` text.

        A NaN or an infinity in it is written as the string ``"NaN"``, ``"Infinity"`` or
        ``"-Infinity"`` (strict JSON, which the web UI can parse); everything else is
        exactly what ``json.dumps(server_metrics)`` writes.
        """
        text = dumps_compatible(server_metrics)
        result = database[JOB_COLLECTION_NAME].update_one(
            {"_id": self.id}, {"$set": {"server_metrics": text}}
        )
        assert_updated_successfully(result)
        self.server_metrics = text

    def set_client_metrics(
        self, client_uuid: str, client_metrics: Any, database: Database[Document]
    ) -> None:
        """Store one client's metrics snapshot as ``json.dumps`` text (see set_server_metrics).

        The client must be in this job's ``clients_info`` (FLorist's check and message).
        Every element whose ``uuid`` equals ``client_uuid`` exactly is updated, in the one
        document, through an array filter: a repeated uuid gets the snapshot everywhere.
        """
        known = None if self.clients_info is None else [info.uuid for info in self.clients_info]
        if self.clients_info is None or known is None or client_uuid not in known:
            message = f"client uuid {client_uuid} is not in clients_info ({known})"
            raise EntityAssertionError(message)
        text = dumps_compatible(client_metrics)
        result = database[JOB_COLLECTION_NAME].update_one(
            {"_id": self.id, "clients_info.uuid": client_uuid},
            {"$set": {"clients_info.$[client].metrics": text}},
            array_filters=[{"client.uuid": client_uuid}],
        )
        assert_updated_successfully(result)
        for client_info in self.clients_info:
            if client_info.uuid == client_uuid:
                client_info.metrics = text
