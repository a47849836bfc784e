"""A private redis-server for the benchmark: its own port and directory, no persistence.

Measuring against the shared instance would mix other people's traffic into the
numbers (and risk their keys), so the benchmark starts its own and kills it after:
the same server process the tests use (:class:`tests.redis_server.RedisServer`).
"""

from __future__ import annotations

import shutil
import subprocess

from tests.redis_server import RedisServer as PrivateRedis

__all__ = ["PrivateRedis", "server_version"]


def server_version() -> str:
    """``redis-server --version``'s ``v=`` part, or what went wrong."""
    executable = shutil.which("redis-server")
    if executable is None:
        return "not installed"
    output = subprocess.run(
        [executable, "--version"], capture_output=True, text=True, check=False
    ).stdout
    for part in output.split():
        if part.startswith("v="):
            return part[2:]
    return output.strip()
