#!/usr/bin/env bash
# Builds the image with a real Docker engine and checks that it runs (./dev test-container):
#   1. `--help` exits 0;
#   2. `demo --fast` finishes its job with networking off (--network=none: fakeredis and
#      the in-memory MongoDB inside the container);
#   3. `run` as the image's non-root user (uid 10001) against a redis-server on this
#      machine's loopback (--network=host): it creates its consumer group and dead-letters
#      an invalid entry, and `stats` and `dlq list` work through docker exec (as through
#      `docker compose exec`);
#   4. `healthcheck` in that container exits 0;
#   5. `docker stop` ends it with exit status 0 within the grace period.
#
#   deploy/test-container.sh [--debian-base] [--keep-image]    (DOCKER=... names the docker command)
#
# --debian-base first builds the Dockerfile's base image from Debian packages
# (deploy/debian-base.sh), for a machine that reaches Debian's archive and PyPI but no
# container registry. Containers use --network=host or none only, so the engine may run
# without a bridge (dockerd --bridge=none --iptables=false).
set -euo pipefail
cd "$(dirname "$0")/.."

image=florist-worker:test
docker=${DOCKER:-docker} # the command line of the engine
grace_s=30
debian_base=false
keep_image=false
for argument in "$@"; do
    case "$argument" in
        --debian-base) debian_base=true ;;
        --keep-image) keep_image=true ;;
        *)
            echo "usage: deploy/test-container.sh [--debian-base] [--keep-image]" >&2
            exit 2
            ;;
    esac
done

say() { echo "test-container: $*" >&2; }
fail() {
    say "FAILED: $*"
    exit 1
}

if ! command -v "$docker" >/dev/null 2>&1; then
    say "no $docker command: install a Docker engine (Debian: apt-get install -y docker.io)"
    exit 1
fi
if ! "$docker" info >/dev/null 2>&1; then
    say "'$docker info' finds no running engine: start one (e.g. 'systemctl start docker'," \
        "or 'dockerd --iptables=false --bridge=none &' where containers need no bridge)"
    exit 1
fi
if ! command -v redis-server >/dev/null 2>&1; then
    say "redis-server is missing (Debian: apt-get install -y redis-server)"
    exit 1
fi

if $debian_base; then
    deploy/debian-base.sh
fi

container=""
redis_pid=""
workdir=$(mktemp -d)
cleanup() {
    if [ -n "$container" ]; then "$docker" rm -f "$container" >/dev/null 2>&1 || true; fi
    if [ -n "$redis_pid" ]; then kill "$redis_pid" 2>/dev/null || true; fi
    rm -rf "$workdir"
    if ! $keep_image; then "$docker" rmi "$image" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

say "building $image"
started=$(date +%s)
if ! "$docker" build --network=host -t "$image" . >"$workdir/build.log" 2>&1; then
    tail -20 "$workdir/build.log" >&2
    if grep -qiE "pull access denied|failed to resolve|dial tcp|no such host|TLS handshake" \
        "$workdir/build.log"; then
        say "the base image could not be pulled: without a registry, run with --debian-base"
    fi
    fail ""$docker" build"
fi
build_s=$(($(date +%s) - started))
size_mb=$(($("$docker" image inspect -f '{{.Size}}' "$image") / 1000000))
say "built in ${build_s} s, image size ${size_mb} MB"

say "1. --help"
"$docker" run --rm "$image" --help | grep -q "healthcheck" || fail "--help"

say "2. demo --fast with --network=none"
"$docker" run --rm --network=none "$image" demo --fast >"$workdir/demo.log" 2>&1 ||
    { tail -20 "$workdir/demo.log" >&2; fail "demo --fast without a network"; }
grep -q "FINISHED_SUCCESSFULLY" "$workdir/demo.log" || fail "the demo job did not finish"

say "3. run against a redis-server on loopback, as non-root"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$workdir" >"$workdir/redis.log" 2>&1 &
redis_pid=$!
cli() { redis-cli -p "$port" "$@"; }
for _ in $(seq 50); do cli ping >/dev/null 2>&1 && break; sleep 0.1; done
cli ping >/dev/null || fail "the private redis-server did not start"

container=$("$docker" run -d --network=host --stop-timeout "$grace_s" \
    -e FLORIST_REDIS_URL="redis://127.0.0.1:$port/0" -e FLORIST_MONGODB_URI=memory:// \
    -e FLORIST_HEARTBEAT_INTERVAL_S=1 "$image" run)
uid=$("$docker" exec "$container" id -u)
[ "$uid" = 10001 ] || fail "the worker runs as uid $uid, not 10001"

wait_for() { # seconds, description, command...
    local seconds=$1 what=$2
    shift 2
    for _ in $(seq $((seconds * 5))); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    "$docker" logs "$container" 2>&1 | tail -20 >&2
    fail "$what (waited ${seconds} s)"
}
group_exists() { cli xinfo groups florist:events | grep -q florist-worker; }
wait_for 60 "the worker created its consumer group" group_exists
cli xadd florist:events '*' v 1 type no.such.type job_id none >/dev/null
dead_lettered() { [ "$(cli xlen florist:events:dead)" = 1 ]; }
wait_for 30 "the worker dead-lettered an invalid entry" dead_lettered

say "   stats and dlq list through docker exec, as with docker compose exec"
"$docker" exec "$container" florist-worker stats >"$workdir/stats.txt" 2>&1 ||
    { cat "$workdir/stats.txt" >&2; fail "florist-worker stats in the container"; }
grep -q florist-worker "$workdir/stats.txt" || fail "stats does not show the consumer group"
"$docker" exec "$container" florist-worker dlq list >"$workdir/dlq.txt" 2>&1 ||
    { cat "$workdir/dlq.txt" >&2; fail "florist-worker dlq list in the container"; }
grep -q invalid "$workdir/dlq.txt" || fail "dlq list does not show the dead letter"

say "4. healthcheck"
wait_for 30 "healthcheck exits 0" "$docker" exec "$container" florist-worker healthcheck

say "5. "$docker" stop within ${grace_s} s"
started=$(date +%s%N)
"$docker" stop "$container" >/dev/null
stop_ms=$((($(date +%s%N) - started) / 1000000))
code=$("$docker" inspect -f '{{.State.ExitCode}}' "$container")
[ "$code" = 0 ] || fail ""$docker" stop: exit status $code"
[ "$stop_ms" -lt $((grace_s * 1000)) ] || fail ""$docker" stop took ${stop_ms} ms"
say "stopped in ${stop_ms} ms, exit status 0"

say "all checks passed (build ${build_s} s, image ${size_mb} MB, stop ${stop_ms} ms)"
