"""What the figures were measured on: numbers mean little without the machine."""

from __future__ import annotations

import os
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import mongomock_ng

from bench.server import server_version
from bench.workloads import insert_jobs, steady

PACKAGES = (
    "redis",
    "hiredis",
    "pymongo",
    "mongomock-ng",
    "faststream",
    "pydantic",
    "structlog",
    "orjson",
)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def mongomock_update_us(jobs: int, updates: int = 300) -> float:
    """Microseconds per ``update_one`` by ``_id`` on mongomock holding ``jobs`` documents:
    it has no index, so this grows with the collection and bounds every system."""
    database: Any = mongomock_ng.MongoClient()["calibrate"]
    workload = steady(jobs)
    insert_jobs(database, workload)
    ids = [job["_id"] for job in workload.jobs]
    started = time.perf_counter()
    for number in range(updates):
        database["job"].update_one({"_id": ids[number % jobs]}, {"$set": {"status": "X"}})
    return round((time.perf_counter() - started) / updates * 1e6, 1)


def describe() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": _ram_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "redis_server": server_version(),
        "packages": {package: _version(package) for package in PACKAGES},
        "load_average_at_start": [round(value, 2) for value in load] if load else None,
    }
