"""florist_events imports with nothing but the standard library and redis.

FL processes pin pydantic 1 and their own packages: importing the producer must not need
pydantic, structlog, pymongo or hiredis (nor the worker), whatever else is installed.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

FORBIDDEN = ("pydantic", "pydantic_core", "structlog", "pymongo", "bson", "hiredis", "worker")


def test_imports_with_the_heavy_packages_blocked() -> None:
    code = textwrap.dedent(
        f"""
        import sys
        forbidden = {FORBIDDEN!r}

        class Blocker:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in forbidden:
                    raise ImportError(f"{{name}} is blocked in this test")
                return None

        sys.meta_path.insert(0, Blocker())
        import florist_events
        from florist_events import EventPublisher, StreamMetricsReporter, check_entry
        loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set(forbidden))
        print("loaded:", loaded)
        print("version:", florist_events.__version__)
        """
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert completed.returncode == 0, completed.stderr
    assert "loaded: []" in completed.stdout
    assert "version: 0.1.0" in completed.stdout


def test_the_package_declares_only_redis() -> None:
    from importlib.metadata import requires

    requirements = requires("florist-events") or []
    runtime = [r for r in requirements if "extra ==" not in r]
    assert [r.split(">")[0].split("=")[0].strip() for r in runtime] == ["redis"]


def test_typed() -> None:
    from importlib.resources import files

    assert files("florist_events").joinpath("py.typed").is_file()
