"""The deployment files: Dockerfile, .dockerignore, the lock file, compose.yaml and deploy/.

No Docker engine is needed: the Dockerfile is linted with hadolint and read for
its structure, compose.yaml is validated against the compose specification and
read for its structure, and the example Redis ACL is loaded into a private
redis-server and exercised user by user, also through the script that starts
compose's Redis.  Each linter is also run on a deliberately bad file, so that a
linter which silently checks nothing fails here.  `./dev test-container` builds
and runs the image with a real engine.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import mongomock_ng
import pytest
import redis
from packaging.requirements import Requirement
from ruamel.yaml import YAML

from tests.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "compose.yaml"
ACL = ROOT / "deploy" / "redis-acl.conf"
EMITTER = ROOT / "deploy" / "emitter.py"
DEPLOY_README = ROOT / "deploy" / "README.md"
LOCK = ROOT / "deploy" / "requirements.lock"
LOCK_INPUTS = ROOT / "deploy" / "requirements.in"
REDIS_START = ROOT / "deploy" / "redis-start.sh"
MONGODB_INIT = ROOT / "deploy" / "mongodb-init.js"
EXAMPLE_ENV = ROOT / "deploy" / "example.env"

EMITTER_IN_IMAGE = "/opt/florist-worker/emitter.py"
PLACEHOLDER_PASSWORD = "CHANGE_ME"


# --------------------------------------------------------------------------- tools


def tool(name: str) -> str:
    """A console script of the test extra: next to this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    return found


def run(*command: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def hadolint(path: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    # --no-color keeps the report readable in an assertion message; the default
    # failure threshold (info) fails on any finding at all.
    return run(tool("hadolint"), "--no-color", str(path), cwd=cwd)


def check_compose_schema(path: Path) -> subprocess.CompletedProcess[str]:
    return run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path))


# --------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """``(KEYWORD, arguments)`` per instruction, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        keyword, _, arguments = pending.strip().partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends in a continuation line"
    return instructions


def stages(instructions: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """Instructions split at each FROM (each stage starts with its FROM)."""
    result: list[list[tuple[str, str]]] = []
    for instruction in instructions:
        if instruction[0] == "FROM":
            result.append([])
        assert result, "an instruction comes before the first FROM"
        result[-1].append(instruction)
    return result


@pytest.fixture(scope="module")
def dockerfile() -> list[list[tuple[str, str]]]:
    return stages(dockerfile_instructions(DOCKERFILE.read_text()))


def exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list), f"not in exec (JSON array) form: {arguments}"
    return value


def test_hadolint_passes_the_dockerfile() -> None:
    result = hadolint(DOCKERFILE, ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_fails_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install foo\n")
    result = hadolint(bad, tmp_path)
    assert result.returncode != 0, result.stdout
    assert "DL3007" in result.stdout  # `latest`
    assert "DL3008" in result.stdout  # unpinned apt package


def test_every_stage_is_python_3_11_slim_pinned_to_a_patch_release(dockerfile: Any) -> None:
    assert len(dockerfile) >= 2, "a builder stage and a final stage"
    for stage in dockerfile:
        image = stage[0][1].split()[0]
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?", image), (
            f"FROM {image} is not python:3.11.<patch>-slim pinned"
        )


def test_final_stage_copies_only_the_venv_from_the_builder(dockerfile: Any) -> None:
    builder_name = dockerfile[0][0][1].split()[-1]
    assert dockerfile[0][0][1].split()[-2].upper() == "AS"
    final = dockerfile[-1]
    copies_from = [args for keyword, args in final if keyword == "COPY" and "--from=" in args]
    assert copies_from == [f"--from={builder_name} /opt/venv /opt/venv"]
    for keyword, args in final:
        if keyword == "RUN":
            assert not re.search(r"\b(apt-get|apk|pip|gcc|make|build-essential)\b", args), (
                f"the final stage installs something: RUN {args}"
            )


def test_builder_installs_every_dependency_from_the_lock_with_hashes(dockerfile: Any) -> None:
    builder = dockerfile[0]
    assert ("COPY", "deploy/requirements.lock ./") in builder
    runs = [args for keyword, args in builder if keyword == "RUN"]
    assert "pip install --require-hashes --no-deps -r requirements.lock" in runs
    # The local wheels come with nothing from an index, and the result is checked.
    local = next(args for args in runs if "pip wheel" in args)
    assert "pip install --no-deps --no-index" in local
    assert "pip check" in local
    assert "import mongomock_ng, fakeredis" in local  # the memory extra, from the lock
    assert "/opt/venv" in " ".join(args for _, args in builder)


def test_the_dockerfile_has_no_syntax_directive() -> None:
    # A `# syntax=` line makes BuildKit pull a frontend image from a registry.
    assert not re.search(r"^#\s*syntax\s*=", DOCKERFILE.read_text(), re.MULTILINE | re.IGNORECASE)


def lock_pins() -> dict[str, tuple[str, list[str]]]:
    """``{name: (version, hashes)}`` of deploy/requirements.lock."""
    pins: dict[str, tuple[str, list[str]]] = {}
    name = ""
    for line in LOCK.read_text().splitlines():
        pinned = re.match(r"^([A-Za-z0-9._-]+)==([^ ;\\]+)", line)
        if pinned:
            name = pinned.group(1).lower().replace("_", "-")
            pins[name] = (pinned.group(2), [])
        elif line.strip().startswith("--hash=sha256:"):
            pins[name][1].append(line.strip().removeprefix("--hash=sha256:").rstrip(" \\"))
    return pins


def load_lock_inputs() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lock_inputs", ROOT / "deploy" / "lock_inputs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_lock_pins_every_requirement_within_its_range_with_hashes() -> None:
    """`./dev lock` was run after the last change of a range: each requirement of the
    pyproject.toml files (runtime, the memory extra, the producer's, the build backend)
    is pinned to a version inside its range, and every pin has a sha256 hash."""
    pins = lock_pins()
    assert pins
    for name, (_version, hashes) in pins.items():
        assert hashes and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), name
    requirements = load_lock_inputs().requirements()
    assert LOCK_INPUTS.read_text().splitlines()[1:] == requirements  # the lock's input is current
    for line in requirements:
        requirement = Requirement(line)
        name = requirement.name.lower().replace("_", "-")
        assert name in pins, f"{name} is not in deploy/requirements.lock: run ./dev lock"
        assert requirement.specifier.contains(pins[name][0]), (
            f"{name}=={pins[name][0]} is outside {requirement.specifier}: run ./dev lock"
        )
    assert "florist-events" not in pins  # built from producer/, never from an index


def test_each_runtime_dependency_has_an_upper_bound() -> None:
    """A rebuild never takes a major version the tests never ran with."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for line in project["dependencies"] + project["optional-dependencies"]["memory"]:
        operators = {spec.operator for spec in Requirement(line).specifier}
        assert operators & {"<", "<=", "==", "~="}, f"{line} has no upper bound"


def test_builder_installs_the_producer_distribution_from_the_context(dockerfile: Any) -> None:
    # florist-events (producer/) is not on PyPI: the builder builds its wheel and installs
    # that file beside the worker's, so pip never looks the name up anywhere.
    builder = dockerfile[0]
    assert ("COPY", "producer/ ./producer/") in builder
    runs = " ".join(args for keyword, args in builder if keyword == "RUN")
    assert re.search(
        r"pip wheel --no-deps --no-build-isolation --wheel-dir /dist \./producer \.", runs
    )
    assert "/dist/florist_events-*.whl" in runs
    assert runs.index("florist_events-") < runs.index("florist_worker-")


def test_final_stage_runs_the_worker_as_a_non_root_user(dockerfile: Any) -> None:
    final = dockerfile[-1]
    users = [args for keyword, args in final if keyword == "USER"]
    assert users, "no USER in the final stage: the worker would run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}

    def last(keyword: str) -> str:
        values = [args for key, args in final if key == keyword]
        assert values, f"no {keyword} in the final stage"
        return values[-1]

    assert exec_form(last("ENTRYPOINT")) == ["florist-worker"]
    assert exec_form(last("CMD")) == ["run"]
    healthcheck = last("HEALTHCHECK")
    assert "CMD" in healthcheck.split()
    assert exec_form(healthcheck.split(" CMD ", 1)[1]) == ["florist-worker", "healthcheck"]
    environment = " ".join(args for key, args in final if key == "ENV")
    assert "PYTHONUNBUFFERED=1" in environment
    assert "/opt/venv/bin" in environment  # the venv's console scripts are on PATH


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Whether the build context leaves ``path`` out (last matching pattern wins).

    Like Docker: ``*`` stays within one path element, ``**`` crosses them, and a
    pattern that matches a parent directory matches everything under it.
    """

    def compile_(pattern: str) -> re.Pattern[str]:
        regex = ""
        index = 0
        while index < len(pattern):
            if pattern.startswith("**/", index):
                regex += "(.*/)?"
                index += 3
            elif pattern.startswith("**", index):
                regex += ".*"
                index += 2
            elif pattern[index] == "*":
                regex += "[^/]*"
                index += 1
            elif pattern[index] == "?":
                regex += "[^/]"
                index += 1
            else:
                regex += re.escape(pattern[index])
                index += 1
        return re.compile(regex)

    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: end + 1]) for end in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        matcher = compile_(pattern.lstrip("!").strip("/"))
        if any(matcher.fullmatch(prefix) for prefix in prefixes):
            excluded = not negated
    return excluded


@pytest.fixture(scope="module")
def dockerignore() -> list[str]:
    lines = (line.strip() for line in DOCKERIGNORE.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def test_dockerignore_keeps_what_the_dockerfile_copies(
    dockerfile: Any, dockerignore: list[str]
) -> None:
    sources = []
    for stage in dockerfile:
        for keyword, args in stage:
            if keyword in {"COPY", "ADD"} and "--from=" not in args:
                words = [word for word in args.split() if not word.startswith("--")]
                sources.extend(words[:-1])
    expected = {"pyproject.toml", "README.md", "worker/", "producer/", "deploy/emitter.py"}
    assert expected <= set(sources)
    for source in sources:
        assert not dockerignore_excludes(source, dockerignore), f"{source} is not in the context"
        if source.endswith("/"):
            inside = f"{source}commands/run.py"
            assert not dockerignore_excludes(inside, dockerignore), f"{inside} is left out"
    for source in sources:
        if source == "README.md" and not (ROOT / source).exists():
            continue  # the project's README, written separately; see the next test
        assert (ROOT / source).exists(), f"COPY {source}: no such file"


def test_the_package_readme_the_build_needs_exists() -> None:
    # pyproject.toml names README.md as the package readme, so building the wheel
    # (in the image's builder stage, or any `pip install .`) fails without it.
    assert (ROOT / "README.md").stat().st_size > 0


def test_dockerignore_leaves_out_local_state(dockerignore: list[str]) -> None:
    for path in [
        ".git/config",
        ".venv/bin/python",
        "tests/test_x.py",
        "bench/run.py",
        ".env",
        "compose.override.yaml",
        "worker/__pycache__/cli.cpython-311.pyc",
        "producer/tests/test_wire.py",
        "producer/build/lib/florist_events/wire.py",
        "producer/src/florist_events.egg-info/PKG-INFO",
        ".venv-py310/bin/python",
    ]:
        assert dockerignore_excludes(path, dockerignore), f"{path} would be in the context"
    assert not dockerignore_excludes("worker/commands/run.py", dockerignore)
    for path in [
        "producer/pyproject.toml",
        "producer/README.md",
        "producer/src/florist_events/__init__.py",
        "producer/src/florist_events/py.typed",
    ]:
        assert not dockerignore_excludes(path, dockerignore), f"{path} is left out"
        assert (ROOT / path).is_file(), f"{path} is missing"


def test_the_dockerignore_matcher_itself() -> None:
    assert dockerignore_excludes("a/b.py", ["*"])
    assert not dockerignore_excludes("a/b.py", ["*", "!a"])
    assert dockerignore_excludes("a/__pycache__/b.pyc", ["**/__pycache__"])
    assert not dockerignore_excludes("ab.py", ["a"])


# --------------------------------------------------------------------------- compose.yaml


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = YAML(typ="safe", pure=True).load(COMPOSE.read_text())
    assert isinstance(document, dict)
    return document


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment", {})
    if isinstance(environment, list):
        return dict(item.split("=", 1) for item in environment)
    return {key: str(value) for key, value in environment.items()}


def command_words(value: str | list[str]) -> list[str]:
    return shlex.split(value) if isinstance(value, str) else [str(word) for word in value]


def test_compose_file_matches_the_compose_specification() -> None:
    result = check_compose_schema(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_schema_check_fails_a_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "compose.yaml"
    bad.write_text('services: {w: {image: 1, deploy: {replicas: "two"}}}\n')
    result = check_compose_schema(bad)
    assert result.returncode != 0, result.stdout


def test_two_worker_replicas_share_one_consumer_group(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    assert worker["deploy"]["replicas"] == 2
    environment = environment_of(worker)
    # Unset, so each replica's consumer name is <hostname>-<pid> (the hostname is
    # the container id): one group, distinct consumers.
    assert "FLORIST_CONSUMER" not in environment
    assert environment.get("FLORIST_GROUP", "florist-worker") == "florist-worker"
    assert re.fullmatch(
        r"redis://florist-worker:\$\{REDIS_WORKER_PASSWORD:\?[^}]+\}@redis:6379/0",
        environment["FLORIST_REDIS_URL"],
    )
    assert re.fullmatch(
        r"mongodb://florist-worker:\$\{MONGODB_WORKER_PASSWORD:\?[^}]+\}@mongodb:27017/"
        r"\?authSource=florist-server",
        environment["FLORIST_MONGODB_URI"],
    )
    # Fixed names or host ports would clash between replicas.
    assert "container_name" not in worker
    assert "ports" not in worker
    assert "hostname" not in worker


def test_worker_is_built_here_and_waits_for_healthy_services(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    assert worker["build"]["context"] == "."
    assert worker["build"].get("dockerfile", "Dockerfile") == "Dockerfile"
    assert worker["depends_on"] == {
        "redis": {"condition": "service_healthy"},
        "mongodb": {"condition": "service_healthy"},
    }
    assert worker["restart"] == "unless-stopped"
    assert re.fullmatch(r"\d+[ms]", str(worker["stop_grace_period"]))


def test_redis_keeps_an_append_only_file_on_a_volume(compose: dict[str, Any]) -> None:
    service = compose["services"]["redis"]
    assert re.fullmatch(r"redis:7\.\d+(\.\d+)?-alpine", service["image"])
    words = command_words(service["command"])
    assert words[words.index("--appendonly") + 1] == "yes"
    assert named_volume_at(compose, service, "/data")
    assert "redis-cli" in " ".join(command_words(service["healthcheck"]["test"]))
    assert "ping" in " ".join(command_words(service["healthcheck"]["test"]))


def test_mongodb_keeps_its_data_on_named_volumes(compose: dict[str, Any]) -> None:
    service = compose["services"]["mongodb"]
    assert re.fullmatch(r"mongo:7\.0(\.\d+)?", service["image"])
    assert named_volume_at(compose, service, "/data/db")
    assert named_volume_at(compose, service, "/data/configdb")
    test = " ".join(command_words(service["healthcheck"]["test"]))
    assert "mongosh" in test
    assert "ping" in test


def named_volume_at(compose: dict[str, Any], service: dict[str, Any], target: str) -> bool:
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, _, rest = volume.partition(":")
            path = rest.split(":")[0]
        else:
            source, path = volume.get("source", ""), volume["target"]
        if path == target:
            return source in (compose.get("volumes") or {})
    return False


def test_emitter_runs_only_in_the_demo_profile_from_the_worker_image(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    emitter = services["emitter"]
    assert emitter["profiles"] == ["demo"]
    assert emitter["image"] == services["worker"]["image"]
    assert emitter["build"] == services["worker"]["build"]
    assert EMITTER_IN_IMAGE in command_words(emitter["entrypoint"])
    assert "FLORIST_CONSUMER" not in environment_of(emitter)
    # The emitter publishes as FLorist's processes would: as the producer user.
    assert environment_of(emitter)["FLORIST_REDIS_URL"].startswith(
        "redis://florist-producer:${REDIS_PRODUCER_PASSWORD:?"
    )
    assert emitter["healthcheck"] == {"disable": True}  # not a worker: no heartbeat
    assert emitter["depends_on"]["redis"] == {"condition": "service_healthy"}
    assert emitter["depends_on"]["mongodb"] == {"condition": "service_healthy"}
    # Everything else starts without a profile.
    assert [name for name, service in services.items() if "profiles" in service] == ["emitter"]


def test_the_emitter_the_compose_file_runs_is_copied_into_the_image(dockerfile: Any) -> None:
    copies = [args for keyword, args in dockerfile[-1] if keyword == "COPY"]
    assert f"deploy/emitter.py {EMITTER_IN_IMAGE}" in copies


# --------------------------------------------------------------------------- Redis ACL


def acl_words(line: str) -> list[str]:
    """A ``user`` line's words; a selector ``( ... )`` is one word, as Redis reads it."""
    words: list[str] = []
    for word in line.split():
        if words and words[-1].startswith("(") and not words[-1].endswith(")"):
            words[-1] += " " + word
        else:
            words.append(word)
    return words


def acl_rules() -> dict[str, list[str]]:
    """``{user: [rule, ...]}`` from the ``user`` lines of deploy/redis-acl.conf."""
    rules: dict[str, list[str]] = {}
    for line in ACL.read_text().splitlines():
        words = acl_words(line)
        if words and words[0] == "user":
            assert len(words) >= 3, f"a user line without rules: {line}"
            rules[words[1]] = words[2:]
    return rules


UUID_KEYS = "????????-????-????-????-????????????"
A_UUID = "0c316680-1375-4e07-84c3-a732a2e6d03f"


def test_acl_file_has_the_users_with_placeholder_passwords() -> None:
    rules = acl_rules()
    assert set(rules) == {"florist-worker", "florist-producer", "florist-api", "default"}
    for name in ("florist-worker", "florist-producer", "florist-api"):
        words = rules[name]
        assert "on" in words
        passwords = [word for word in words if word.startswith(">")]
        assert passwords == [f">{PLACEHOLDER_PASSWORD}"], f"{name}: a real password in the file?"
        assert "-@all" in words and "+@all" not in words and "allkeys" not in words
        assert "~*" not in words and "allcommands" not in words
    producer = rules["florist-producer"]
    assert [word for word in producer if word.startswith("~")] == ["~florist:events"]
    # SET (write-only) on uuid-shaped keys, in a selector of its own: nothing else.
    assert [word for word in producer if word.startswith("(")] == [f"(+set %W~{UUID_KEYS})"]
    assert [word for word in producer if word.startswith("+")] == [
        "+ping", "+hello", "+select", "+client|setname", "+multi", "+exec", "+discard", "+xadd",
    ]  # fmt: skip
    api = rules["florist-api"]
    assert [word for word in api if "~" in word] == [f"%R~{UUID_KEYS}"]
    assert "+get" in api and not any(w.startswith("(") for w in api)
    assert rules.get("default") == ["off"]


def test_the_uuid_key_pattern_matches_florist_s_uuids_only() -> None:
    import fnmatch
    import uuid

    for _ in range(20):
        assert fnmatch.fnmatchcase(str(uuid.uuid4()), UUID_KEYS)
    for name in ["florist:events", "florist:events:dead", "x" * 36, A_UUID + "0", A_UUID[1:]]:
        assert not fnmatch.fnmatchcase(name, UUID_KEYS), name


@pytest.fixture
def acl_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server with the file's users set by ``ACL SETUSER``, line by line."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    admin = redis.Redis(port=server.port, socket_timeout=5)
    try:
        for name, words in acl_rules().items():
            if name != "default":  # stays open here, so the admin connection keeps working
                admin.execute_command("ACL", "SETUSER", name, *words)
        yield server
    finally:
        admin.close()
        server.stop()


def connect(server: RedisServer, user: str) -> redis.Redis:
    return redis.Redis(
        port=server.port, username=user, password=PLACEHOLDER_PASSWORD, socket_timeout=5
    )


def denied(call: Any, *args: Any, **kwargs: Any) -> None:
    with pytest.raises(redis.exceptions.NoPermissionError):
        call(*args, **kwargs)


@pytest.mark.redis_server
def test_producer_can_only_append_to_the_events_stream(acl_server: RedisServer) -> None:
    producer = connect(acl_server, "florist-producer")
    worker = connect(acl_server, "florist-worker")
    try:
        assert producer.ping()
        entry_id = producer.xadd("florist:events", {"v": "1", "type": "job.status"})
        worker.xgroup_create("florist:events", "florist-worker", id="0")

        denied(producer.xreadgroup, "florist-worker", "p", {"florist:events": ">"})
        denied(producer.xdel, "florist:events", entry_id)
        denied(producer.xack, "florist:events", "florist-worker", entry_id)
        denied(producer.xrange, "florist:events")
        denied(producer.xlen, "florist:events")
        denied(producer.xtrim, "florist:events", maxlen=0)
        denied(producer.xadd, "florist:events:dead", {"v": "1"})
        denied(producer.delete, "florist:events")
        denied(producer.get, "florist:events")
        denied(producer.keys, "*")
        denied(producer.flushall)
        denied(producer.config_get, "*")
        assert worker.xlen("florist:events") == 1
    finally:
        producer.close()
        worker.close()


@pytest.mark.redis_server
def test_producer_may_set_uuid_keys_with_its_entry_and_nothing_more(
    acl_server: RedisServer,
) -> None:
    producer = connect(acl_server, "florist-producer")
    api = connect(acl_server, "florist-api")
    worker = connect(acl_server, "florist-worker")
    try:
        pipe = producer.pipeline(transaction=True)
        pipe.set(A_UUID, '{"fit_start": "t"}')
        pipe.xadd("florist:events", {"v": "1"})
        assert pipe.execute()[0] is True
        assert producer.set(A_UUID, '{"fit_start": "t2"}')
        assert api.get(A_UUID) == b'{"fit_start": "t2"}'

        denied(producer.set, A_UUID, "x", get=True)  # write-only: no reading through SET
        denied(producer.get, A_UUID)
        denied(producer.delete, A_UUID)
        denied(producer.expire, A_UUID, 10)
        denied(producer.xadd, A_UUID, {"v": "1"})
        denied(producer.set, "florist:events", "x")  # cannot overwrite the stream
        denied(producer.set, "not-a-uuid", "x")
        denied(producer.set, A_UUID + "0", "x")
        denied(producer.publish, A_UUID, "update")
        denied(producer.hset, A_UUID, "a", "b")
        # A refused command inside MULTI aborts the whole transaction: no entry without key.
        length = worker.xlen("florist:events")
        pipe = producer.pipeline(transaction=True)
        pipe.set("not-a-uuid", "x")
        pipe.xadd("florist:events", {"v": "1"})
        with pytest.raises(redis.exceptions.RedisError):
            pipe.execute()
        assert worker.xlen("florist:events") == length
    finally:
        producer.close()
        api.close()
        worker.close()


@pytest.mark.redis_server
def test_florist_api_may_only_read_uuid_keys(acl_server: RedisServer) -> None:
    producer = connect(acl_server, "florist-producer")
    api = connect(acl_server, "florist-api")
    try:
        assert api.ping()
        producer.set(A_UUID, "{}")
        assert api.get(A_UUID) == b"{}"
        assert api.get("11111111-2222-4333-8444-555555555555") is None
        denied(api.set, A_UUID, "x")
        denied(api.delete, A_UUID)
        denied(api.get, "florist:events")
        denied(api.xrange, "florist:events")
        denied(api.keys, "*")
        denied(api.publish, A_UUID, "x")
    finally:
        producer.close()
        api.close()


@pytest.mark.redis_server
def test_drop_in_reporter_works_as_the_producer_user(acl_server: RedisServer) -> None:
    """FLorist's reporter line with the drop-in, given the producer user: the entry and
    the snapshot key are written, and FLorist's API (as florist-api) reads the key."""
    from florist_events import StreamMetricsReporter

    api = connect(acl_server, "florist-api")
    worker = connect(acl_server, "florist-worker")
    reporter = StreamMetricsReporter(
        host="127.0.0.1",
        port=str(acl_server.port),
        run_id=A_UUID,
        username="florist-producer",
        password=PLACEHOLDER_PASSWORD,
        stream="florist:events",
    )
    try:
        reporter.initialize(id="server-name")
        reporter.report({"fit_start": "2024-11-20 14:00:00", "host_type": "server"})
        reporter.report({"fit_round_start": "a"}, 1)
        reporter.shutdown()
        assert not reporter.pending
        snapshot = json.loads(api.get(A_UUID))
        assert "fit_start" in snapshot  # what FLorist's wait_for_metric looks for
        assert snapshot["rounds"] == {"1": {"fit_round_start": "a"}}
        entries = worker.xrange("florist:events")
        assert len(entries) == 2
        assert entries[-1][1][b"server_uuid"] == A_UUID.encode()
    finally:
        reporter.publisher.close()
        api.close()
        worker.close()


@pytest.mark.redis_server
def test_worker_can_consume_dead_letter_and_requeue(acl_server: RedisServer) -> None:
    producer = connect(acl_server, "florist-producer")
    worker = connect(acl_server, "florist-worker")
    stream, group, dead = "florist:events", "florist-worker", "florist:events:dead"
    try:
        assert worker.ping()
        assert worker.client_setname("host-1")
        assert "redis_version" in worker.info("server")
        worker.xgroup_create(stream, group, id="0", mkstream=True)
        worker.xgroup_createconsumer(stream, group, "host-2")
        first = producer.xadd(stream, {"v": "1", "type": "job.status"})
        second = producer.xadd(stream, {"v": "1", "type": "job.status"})

        read = worker.xreadgroup(group, "host-1", {stream: ">"}, count=10, block=100)
        assert [entry_id for entry_id, _ in read[0][1]] == [first, second]
        assert worker.xpending(stream, group)["pending"] == 2
        assert worker.xpending_range(stream, group, "-", "+", 10)
        claimed = worker.xautoclaim(stream, group, "host-2", min_idle_time=0, count=10)
        assert len(claimed[1]) == 2
        assert worker.xclaim(stream, group, "host-1", 0, [first])
        assert worker.xinfo_stream(stream)["length"] == 2
        assert worker.xinfo_groups(stream)[0]["name"] == group.encode()
        assert worker.xinfo_consumers(stream, group)
        assert worker.xlen(stream) == 2
        assert len(worker.xrange(stream)) == 2
        assert len(worker.xrevrange(stream)) == 2

        # Dead-lettering: XADD to the dead-letter stream and XACK in one MULTI/EXEC.
        pipe = worker.pipeline(transaction=True)
        pipe.xadd(dead, {"v": "1", "dead_reason": "invalid", "origin_id": first})
        pipe.xack(stream, group, first, second)
        _, acknowledged = pipe.execute()
        assert acknowledged == 2
        # Requeue: the dead letter goes back to the events stream and leaves the other.
        ((dead_id, fields),) = worker.xrange(dead)
        pipe = worker.pipeline(transaction=True)
        pipe.xadd(stream, fields)
        pipe.xdel(dead, dead_id)
        pipe.execute()
        assert worker.xlen(dead) == 0
        assert worker.xlen(stream) == 3

        denied(worker.flushall)
        denied(worker.flushdb)
        denied(worker.config_get, "maxmemory")
        denied(worker.config_set, "appendonly", "no")
        denied(worker.keys, "*")
        denied(worker.scan)
        denied(worker.delete, stream)
        denied(worker.xgroup_destroy, stream, group)
        denied(worker.xgroup_delconsumer, stream, group, "host-2")
        denied(worker.set, "other:key", "1")
        denied(worker.xadd, "other:stream", {"v": "1"})
        denied(worker.publish, "florist:events", "x")
        denied(worker.execute_command, "SAVE")
        denied(worker.execute_command, "CLIENT", "LIST")
        denied(worker.acl_list)
        # Scripts run with the user's own permissions: DEL and GET on presence keys only.
        with pytest.raises(redis.ResponseError, match="can't access"):
            worker.eval("return redis.call('DEL', KEYS[1])", 1, stream)
        assert worker.xlen(stream) == 3
        denied(worker.get, stream)
    finally:
        producer.close()
        worker.close()


@pytest.mark.redis_server
def test_the_worker_holds_its_consumer_name_and_the_producer_cannot_touch_it(
    acl_server: RedisServer,
) -> None:
    from worker.presence import ConsumerTaken, Presence
    from worker.settings import Settings

    producer = connect(acl_server, "florist-producer")
    worker = connect(acl_server, "florist-worker")
    settings = Settings(consumer="host-1", heartbeat_ttl_s=30)
    presence = Presence(worker, settings)
    try:
        presence.claim()
        assert presence.key == "florist:events:consumer:florist-worker:host-1"
        assert presence.renew()
        with pytest.raises(ConsumerTaken):
            Presence(worker, settings).claim()

        denied(producer.get, presence.key)
        denied(producer.set, presence.key, "another")
        denied(producer.delete, presence.key)
        denied(producer.pexpire, presence.key, 1)
        denied(producer.eval, "return 1", 0)
        assert worker.get(presence.key) == presence.holder.encode()

        presence.release()
        assert worker.get(presence.key) is None
    finally:
        producer.close()
        worker.close()


@pytest.mark.redis_server
def test_acl_file_loads_as_a_redis_config_file(tmp_path: Path) -> None:
    """The whole file (comments and ``user default off`` included) as redis.conf."""
    executable = shutil.which("redis-server")
    assert executable is not None, "redis-server is not installed"
    port = free_port()
    process = subprocess.Popen(
        [
            executable,
            str(ACL),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(tmp_path),
            "--save",
            "",
            "--appendonly",
            "no",
            "--logfile",
            str(tmp_path / "redis.log"),
        ],
        stdout=subprocess.DEVNULL,
    )
    worker = redis.Redis(
        port=port, username="florist-worker", password=PLACEHOLDER_PASSWORD, socket_timeout=2
    )
    anonymous = redis.Redis(port=port, socket_timeout=2)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                assert worker.ping()
                break
            except redis.ConnectionError:
                log = tmp_path / "redis.log"
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(
                        "redis-server refused the file:\n"
                        + (log.read_text() if log.exists() else "")
                    )
                time.sleep(0.05)
        with pytest.raises(redis.exceptions.AuthenticationError):
            anonymous.ping()  # the default user is off
        denied(worker.flushall)
        producer = redis.Redis(
            port=port, username="florist-producer", password=PLACEHOLDER_PASSWORD, socket_timeout=2
        )
        try:  # the selector survives redis.conf parsing
            assert producer.set(A_UUID, "{}")
            denied(producer.set, "florist:events", "x")
        finally:
            producer.close()
    finally:
        worker.close()
        anonymous.close()
        process.kill()
        process.wait(timeout=10)


# --------------------------------------------------------------------------- emitter


def load_emitter() -> ModuleType:
    import worker.producer  # noqa: F401  (the emitter imports it; fail loudly if it breaks)

    spec = importlib.util.spec_from_file_location("florist_deploy_emitter", EMITTER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def expected_event_count(clients: int, rounds: int) -> int:
    # IN_PROGRESS, server fit_start, each client initialized, per round 3 server
    # and 2 per client, then fit_end, each client shutdown, server shutdown.
    return 1 + 1 + clients + rounds * (3 + 2 * clients) + 1 + clients + 1


def test_emitter_creates_the_job_and_publishes_a_whole_run() -> None:
    import fakeredis

    emitter = load_emitter()
    from worker.entities import Job
    from worker.producer import EventPublisher

    client = fakeredis.FakeRedis()
    database = mongomock_ng.MongoClient()["florist-server"]
    job = emitter.create_job(database, clients=2, rounds=3)
    document = database["job"].find_one({"_id": job.id})
    assert Job(**document).status.value == "NOT_STARTED"
    assert len(document["clients_info"]) == 2

    ids = emitter.publish_run(EventPublisher(client), job, rounds=3)
    assert len(ids) == expected_event_count(2, 3) == client.xlen("florist:events")
    entries = [
        {key.decode(): value.decode() for key, value in fields.items()}
        for _, fields in client.xrange("florist:events")
    ]
    assert entries[0]["type"] == "job.status" and entries[0]["status"] == "IN_PROGRESS"
    assert {entry["job_id"] for entry in entries} == {job.id}
    last_server = [e for e in entries if e["type"] == "server.metrics"][-1]
    assert {"fit_end", "shutdown"} <= set(json.loads(last_server["metrics"]))
    assert set(json.loads(last_server["metrics"])["rounds"]) == {"1", "2", "3"}
    # Nothing applied yet: the emitter's own check says what is missing.
    assert emitter.problems(database, job)


@pytest.mark.redis_server
def test_the_emitter_command_waits_until_a_worker_applied_its_job(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """``python deploy/emitter.py`` as the compose demo runs it, a worker draining alongside."""
    emitter = load_emitter()
    consumer = importlib.import_module("worker.consumer")
    from worker.settings import Settings

    for name in ("STREAM", "GROUP", "DEAD_STREAM", "CONSUMER", "MONGODB_DB"):
        monkeypatch.delenv(f"FLORIST_{name}", raising=False)
    monkeypatch.setenv("FLORIST_REDIS_URL", redis_url)
    monkeypatch.setenv("FLORIST_MONGODB_URI", "mongodb://mongodb.invalid:27017")
    mongo = mongomock_ng.MongoClient()
    monkeypatch.setattr(emitter, "MongoClient", lambda uri: mongo)
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    client.flushdb()
    settings = Settings(consumer="emitter-test", heartbeat_file=tmp_path / "heartbeat")
    worker = consumer.Worker(client, mongo["florist-server"], settings=settings)
    done = threading.Event()

    def drain_until_done() -> None:
        while not done.is_set():
            worker.drain()
            time.sleep(0.05)

    draining = threading.Thread(target=drain_until_done, daemon=True)
    draining.start()
    try:
        code = emitter.main(["--rounds", "2", "--interval", "0", "--wait", "30"])
    finally:
        done.set()
        draining.join(timeout=30)
        worker.stop()
        client.flushdb()
        client.close()
    output = capsys.readouterr().out
    assert code == 0, output
    assert "FINISHED_SUCCESSFULLY with all metrics" in output
    assert f"published {expected_event_count(2, 2)} events" in output


def test_the_emitter_refuses_an_in_memory_database(monkeypatch: pytest.MonkeyPatch) -> None:
    emitter = load_emitter()
    monkeypatch.setenv("FLORIST_MONGODB_URI", "memory://")
    assert emitter.main(["--wait", "0"]) == 2


def within(seconds: float, function: Any, *args: Any, **kwargs: Any) -> Any:
    """``function(...)``, or a test failure (not a hung suite) after ``seconds``.

    A worker treats some Redis errors as an outage and backs off until they pass;
    a command the ACL refuses must fail this test, not wait forever.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(function, *args, **kwargs)
        try:
            return future.result(timeout=seconds)
        except concurrent.futures.TimeoutError:
            pytest.fail(f"{getattr(function, '__name__', function)} did not return in {seconds} s")
        finally:
            pool.shutdown(wait=False, cancel_futures=True)


@pytest.mark.redis_server
def test_the_demo_run_is_applied_by_a_worker_under_the_acl(
    acl_server: RedisServer, tmp_path: Path
) -> None:
    """Producer and worker each with only their ACL user: the demo run ends finished,
    and dead-lettering, stats, replay, requeue and drop all work as florist-worker."""
    emitter = load_emitter()
    consumer = importlib.import_module("worker.consumer")
    from worker.producer import EventPublisher
    from worker.settings import Settings

    producer = connect(acl_server, "florist-producer")
    worker_client = connect(acl_server, "florist-worker")
    database = mongomock_ng.MongoClient()["florist-server"]
    settings = Settings(
        redis_url=f"redis://florist-worker:{PLACEHOLDER_PASSWORD}@127.0.0.1:{acl_server.port}/0",
        stream="florist:events",
        group="florist-worker",
        dead_stream="florist:events:dead",
        consumer="acl-test-1",
        heartbeat_file=tmp_path / "heartbeat",
    )
    worker = consumer.Worker(worker_client, database, settings=settings)
    try:
        job = emitter.create_job(database, clients=2, rounds=2)
        publisher = EventPublisher(producer)
        ids = emitter.publish_run(publisher, job, rounds=2)
        publisher.publish_fields({"v": "1", "type": "no.such.type", "job_id": job.id})

        counts = within(60, worker.drain)
        assert counts.get("applied", 0) > 0
        assert counts.get("invalid") == 1
        assert sum(counts.values()) == len(ids) + 1
        assert emitter.problems(database, job) == []
        assert worker_client.xlen("florist:events:dead") == 1

        stats = importlib.import_module("worker.stats")
        snapshot = within(30, stats.collect_stats, worker_client, settings)
        assert snapshot.dead_letters == 1

        replay = importlib.import_module("worker.replay")
        replayed = within(
            60, replay.replay, worker_client, database, dry_run=True, settings=settings
        )
        assert replayed.get("applied", 0) == 0  # everything is already in the document

        deadletter = importlib.import_module("worker.deadletter")
        assert within(30, deadletter.requeue, worker_client, settings=settings) == 1
        assert within(60, worker.drain).get("invalid") == 1
        assert within(30, deadletter.drop, worker_client, None, settings=settings) == 1
        assert worker_client.xlen("florist:events:dead") == 0
    finally:
        worker.stop()
        producer.close()
        worker_client.close()


# --------------------------------------------------------------------------- README


def test_deploy_readme_covers_compose_acl_and_tls() -> None:
    text = DEPLOY_README.read_text()
    for needle in [
        "docker compose up -d --build",
        "--profile demo",
        "--scale worker=",
        "redis-acl.conf",
        "rediss://",
        "tls=true",
        "tlsCAFile=",
        "redact",
    ]:
        assert needle in text, f"deploy/README.md does not mention {needle}"


# --------------------------------------------------------------------------- compose security

PASSWORD_VARIABLES = {
    "REDIS_WORKER_PASSWORD",
    "REDIS_PRODUCER_PASSWORD",
    "REDIS_API_PASSWORD",
    "MONGODB_ROOT_PASSWORD",
    "MONGODB_WORKER_PASSWORD",
}


def test_compose_refuses_to_start_until_every_password_is_set() -> None:
    """Every variable compose.yaml interpolates is a password with `${VAR:?message}`:
    no default that works, and compose's error names the variable and what to do."""
    text = COMPOSE.read_text()
    references = re.findall(r"\$\{([A-Z_]+)([^}]*)\}", text)
    assert {name for name, _ in references} == PASSWORD_VARIABLES
    for name, rest in references:
        assert rest.startswith(":?"), f"${{{name}{rest}}} has a default or no message"
        assert name in rest and "openssl rand" in rest
    assert "CHANGE_ME" not in text
    listed = {line.split("=", 1)[0] for line in EXAMPLE_ENV.read_text().splitlines() if "=" in line}
    assert listed == PASSWORD_VARIABLES
    assert all(line.endswith("=") for line in EXAMPLE_ENV.read_text().splitlines() if "=" in line)


def test_compose_needs_v2_and_says_so() -> None:
    assert "Compose v2" in COMPOSE.read_text()
    assert "Compose v2" in DEPLOY_README.read_text()


def test_compose_redis_runs_on_the_mounted_acl_file(compose: dict[str, Any]) -> None:
    redis_service = compose["services"]["redis"]
    volumes = redis_service["volumes"]
    assert "./deploy/redis-acl.conf:/usr/local/etc/redis/redis-acl.conf:ro" in volumes
    assert "./deploy/redis-start.sh:/usr/local/bin/redis-start.sh:ro" in volumes
    assert command_words(redis_service["entrypoint"]) == [
        "/bin/sh",
        "/usr/local/bin/redis-start.sh",
    ]
    assert "/run/redis" in redis_service["tmpfs"]  # the config with passwords: never on a volume
    probe = " ".join(command_words(redis_service["healthcheck"]["test"]))
    assert "--user florist-worker" in probe and "REDISCLI_AUTH=" in probe


def test_compose_mongodb_authenticates_and_the_worker_has_readwrite_only(
    compose: dict[str, Any],
) -> None:
    mongodb = compose["services"]["mongodb"]
    environment = environment_of(mongodb)
    assert environment["MONGO_INITDB_ROOT_USERNAME"] == "root"
    assert environment["MONGO_INITDB_ROOT_PASSWORD"].startswith("${MONGODB_ROOT_PASSWORD:?")
    assert environment["MONGODB_WORKER_USER"] == "florist-worker"
    assert (
        environment["FLORIST_MONGODB_DB"]
        == environment_of(compose["services"]["worker"])["FLORIST_MONGODB_DB"]
    )
    mounted = "./deploy/mongodb-init.js:/docker-entrypoint-initdb.d/florist-worker-user.js:ro"
    assert mounted in mongodb["volumes"]
    script = MONGODB_INIT.read_text()
    assert 'roles: [{ role: "readWrite", db: name }]' in script
    assert "process.env.MONGODB_WORKER_PASSWORD" in script


def test_compose_services_run_hardened(compose: dict[str, Any]) -> None:
    for name in ("worker", "emitter"):
        service = compose["services"][name]
        assert service["read_only"] is True
        assert service["cap_drop"] == ["ALL"]
        assert service["security_opt"] == ["no-new-privileges:true"]
        assert "/tmp" in service["tmpfs"]


def run_redis_start(tmp_path: Path, port: int, passwords: dict[str, str]) -> subprocess.Popen[str]:
    environment = {"PATH": "/usr/bin:/bin:/usr/local/bin", **passwords}
    environment |= {
        "REDIS_ACL_FILE": str(ACL),
        "REDIS_CONF": str(tmp_path / "run" / "redis.conf"),
        "REDIS_ENTRYPOINT": "env",  # the image's entrypoint, standing in: runs its arguments
    }
    return subprocess.Popen(
        [
            "sh",
            str(REDIS_START),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            str(tmp_path),
        ],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.redis_server
def test_compose_redis_start_gives_each_acl_user_its_password(tmp_path: Path) -> None:
    """The script compose's Redis starts with: each user of deploy/redis-acl.conf logs in
    with its own password (one with characters awk or sed would misread), the placeholder
    and anonymous access are refused, and the config is readable by its owner only."""
    passwords = {
        "REDIS_WORKER_PASSWORD": "w&\\1/x" + "a" * 20,
        "REDIS_PRODUCER_PASSWORD": "p" * 32,
        "REDIS_API_PASSWORD": "q" * 32,
    }
    port = free_port()
    process = run_redis_start(tmp_path, port, passwords)
    try:
        users = {
            "florist-worker": passwords["REDIS_WORKER_PASSWORD"],
            "florist-producer": passwords["REDIS_PRODUCER_PASSWORD"],
            "florist-api": passwords["REDIS_API_PASSWORD"],
        }
        deadline = time.monotonic() + 20
        while True:
            try:
                client = redis.Redis(
                    port=port, username="florist-worker", password=users["florist-worker"]
                )
                client.ping()
                break
            except redis.ConnectionError:
                assert process.poll() is None, process.communicate()[0]
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.1)
        for user, password in users.items():
            assert redis.Redis(port=port, username=user, password=password).ping()
            with pytest.raises(redis.AuthenticationError):
                redis.Redis(port=port, username=user, password=PLACEHOLDER_PASSWORD).ping()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port).ping()
        config = tmp_path / "run" / "redis.conf"
        assert config.stat().st_mode & 0o077 == 0
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_compose_redis_start_refuses_an_empty_password(tmp_path: Path) -> None:
    process = run_redis_start(
        tmp_path, free_port(), {"REDIS_WORKER_PASSWORD": "x", "REDIS_PRODUCER_PASSWORD": "y"}
    )
    output, _ = process.communicate(timeout=10)
    assert process.returncode == 1
    assert "REDIS_API_PASSWORD is empty" in output
    assert not (tmp_path / "run" / "redis.conf").exists()
