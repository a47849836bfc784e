"""How a MongoDB failure is classified: the one place that decides (docs/mongodb-failures.md).

Three classes, each with its own consequence for the entries in flight:

* **outage**: MongoDB cannot take writes now, for reasons an operator fixes without
  touching the entries (network, timeouts, elections, shutdown, overload, a rotated
  password or a revoked role). The worker backs off and retries the whole batch,
  acknowledging nothing: nothing is lost or dead-lettered.
* **refusal**: MongoDB answered and refused this one write (document too large, a
  collection validator, a write the server rejects for this document alone). The
  entry is ``store_error``: retried on later deliveries, then dead-lettered with
  MongoDB's message, so it cannot block the entries behind it.
* **misconfiguration**: the worker cannot work with this setup (``w=0``, an unknown
  or unsatisfiable write concern, an unacknowledged write). The command stops with
  exit status 1 and one line naming the setting.

An update that cannot even be encoded (BSON refuses a value) is a fault of the entry:
``unencodable``, filed as ``invalid``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from bson.errors import InvalidDocument
from pymongo.errors import (
    ConfigurationError,
    ConnectionFailure,
    DocumentTooLarge,
    InvalidName,
    InvalidOperation,
    OperationFailure,
    PyMongoError,
    WriteConcernError,
)


class Failure(StrEnum):
    OUTAGE = "outage"
    REFUSAL = "refusal"
    MISCONFIGURED = "misconfigured"
    UNENCODABLE = "unencodable"


# Labels MongoDB attaches to errors worth retrying later: the retryable-writes
# specification's, and those of a server shedding load (Atlas overload handling).
OUTAGE_LABELS: Final = frozenset(
    {"RetryableWriteError", "SystemOverloadedError", "RetryableError", "TransientTransactionError"}
)

# Server error codes of "not now": network, elections and shutdown (the retryable-writes
# specification's list), time limits, lock and write conflicts, load shedding.
TRANSIENT_CODES: Final = frozenset(
    {
        6,  # HostUnreachable
        7,  # HostNotFound
        24,  # LockTimeout
        46,  # LockBusy
        50,  # MaxTimeMSExpired
        64,  # WriteConcernFailed (wtimeout)
        89,  # NetworkTimeout
        91,  # ShutdownInProgress
        112,  # WriteConflict
        134,  # ReadConcernMajorityNotAvailableYet
        189,  # PrimarySteppedDown
        202,  # NetworkInterfaceExceededTimeLimit
        262,  # ExceededTimeLimit
        317,  # ConnectionPoolExpired
        462,  # IngressRequestRateLimitExceeded (load shedding)
        463,  # admission control: the server is overloaded
        9001,  # SocketException
        10107,  # NotWritablePrimary
        11600,  # InterruptedAtShutdown
        11602,  # InterruptedDueToReplStateChange
        13435,  # NotPrimaryNoSecondaryOk
        13436,  # NotPrimaryOrSecondary
    }
)

# Credentials and roles: fixed by an operator, never by dead-lettering entries.
ACCESS_CODES: Final = frozenset(
    {
        13,  # Unauthorized (a revoked role)
        18,  # AuthenticationFailed (a rotated password)
        11,  # UserNotFound
        8000,  # AtlasError, as Atlas reports authentication failures
    }
)

# Write concern errors no retry can cure: the URI or the server's defaults are wrong.
MISCONFIGURED_WRITE_CONCERN_CODES: Final = frozenset(
    {
        79,  # UnknownReplWriteConcern: w names a tag set the replica set does not have
        100,  # UnsatisfiableWriteConcern: w asks for more members than exist
    }
)


def _code(error: PyMongoError) -> int | None:
    code = getattr(error, "code", None)
    return code if isinstance(code, int) else None


def classify(error: BaseException) -> Failure | None:
    """The class of a failure raised by pymongo or bson; ``None`` if it is neither's."""
    if isinstance(error, DocumentTooLarge):
        return Failure.REFUSAL  # the server's document size limit, for this entry alone
    if isinstance(error, InvalidDocument | UnicodeEncodeError | OverflowError):
        return Failure.UNENCODABLE
    if not isinstance(error, PyMongoError):
        return None
    if isinstance(error, ConfigurationError | InvalidOperation | InvalidName):
        return Failure.MISCONFIGURED  # e.g. w=0 with arrayFilters; an unacknowledged result
    code = _code(error)
    if isinstance(error, WriteConcernError) and code in MISCONFIGURED_WRITE_CONCERN_CODES:
        return Failure.MISCONFIGURED
    if any(error.has_error_label(label) for label in OUTAGE_LABELS):
        return Failure.OUTAGE
    if isinstance(error, ConnectionFailure | WriteConcernError):
        return Failure.OUTAGE  # a write concern not yet satisfied: the write is retried
    if isinstance(error, OperationFailure) and (code in TRANSIENT_CODES or code in ACCESS_CODES):
        return Failure.OUTAGE
    return Failure.REFUSAL


# pymongo appends these to a server selection's message: its timeouts and the whole
# topology description (hundreds of characters, repeating the first sentence).
_NOISE: Final = (" (configured timeouts:", ", Timeout:", ", Topology Description:")


def describe(error: BaseException) -> str:
    """One line for logs, error lines and ``dead_error``: the type, the code, MongoDB's
    message without pymongo's timeouts and topology description."""
    code = _code(error) if isinstance(error, PyMongoError) else None
    message = str(error).splitlines()[0] if str(error) else ""
    for noise in _NOISE:
        message = message.split(noise, 1)[0]
    if isinstance(error, OperationFailure) and isinstance(error.details, dict):
        message = str(error.details.get("errmsg") or message)
    suffix = f" (code {code})" if code is not None else ""
    return f"{type(error).__name__}{suffix}: {message}"


def misconfiguration_hint(error: BaseException) -> str:
    """What to change, for the one-line message of a misconfiguration."""
    code = _code(error) if isinstance(error, PyMongoError) else None
    if code in MISCONFIGURED_WRITE_CONCERN_CODES:
        return "fix the write concern (w=...) in FLORIST_MONGODB_URI or the server's default"
    if isinstance(error, InvalidName):
        return "fix FLORIST_MONGODB_DB"
    return "the worker needs acknowledged writes: remove w=0 from FLORIST_MONGODB_URI"
