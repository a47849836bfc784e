"""florist-worker: FLorist training events from a Redis stream, applied to Job documents."""

__version__ = "0.1.0"
