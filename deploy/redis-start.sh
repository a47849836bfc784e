#!/bin/sh
# Starts Redis with the ACL users of deploy/redis-acl.conf (mounted read-only), each
# user's `>CHANGE_ME` replaced by its password from the environment:
#   florist-worker   REDIS_WORKER_PASSWORD
#   florist-producer REDIS_PRODUCER_PASSWORD
#   florist-api      REDIS_API_PASSWORD
# The resulting config is written to a tmpfs (REDIS_CONF, never to the data volume), read
# by the redis user only, and handed to the image's own entrypoint with the arguments
# given to this script (e.g. --appendonly yes). It refuses to start while a password is
# empty or a placeholder is left.
set -eu

acl_file=${REDIS_ACL_FILE:-/usr/local/etc/redis/redis-acl.conf}
conf=${REDIS_CONF:-/run/redis/redis.conf}
entrypoint=${REDIS_ENTRYPOINT:-docker-entrypoint.sh}

for variable in REDIS_WORKER_PASSWORD REDIS_PRODUCER_PASSWORD REDIS_API_PASSWORD; do
    eval "value=\${$variable:-}"
    if [ -z "$value" ]; then
        echo "redis-start: $variable is empty: set it (openssl rand -hex 32)" >&2
        exit 1
    fi
done

mkdir -p "$(dirname "$conf")"
umask 077
# index/substr rather than sub(): a password is copied as it is, whatever its characters.
awk '
    BEGIN {
        password["florist-worker"] = ENVIRON["REDIS_WORKER_PASSWORD"]
        password["florist-producer"] = ENVIRON["REDIS_PRODUCER_PASSWORD"]
        password["florist-api"] = ENVIRON["REDIS_API_PASSWORD"]
    }
    $1 == "user" && ($2 in password) && (at = index($0, ">CHANGE_ME")) {
        $0 = substr($0, 1, at) password[$2] substr($0, at + length(">CHANGE_ME"))
    }
    { print }
' "$acl_file" >"$conf"
if grep -q '^user .*>CHANGE_ME' "$conf"; then
    echo "redis-start: $acl_file has a user this script gives no password to" >&2
    exit 1
fi
if [ "$(id -u)" = 0 ] && id redis >/dev/null 2>&1; then
    chown redis "$conf"
fi
exec "$entrypoint" redis-server "$conf" "$@"
