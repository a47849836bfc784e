"""Sub-commands of ``florist-worker``; see :mod:`worker.cli`."""
