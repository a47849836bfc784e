"""florist-worker: FLorist training events from a Redis stream, applied to Job documents."""

from worker.logs import use_default_logging

__version__ = "0.1.0"

# Used as a library with structlog left unconfigured: info and above, on stderr (no line
# per event); an application's own structlog configuration always wins (see worker.logs).
use_default_logging()
