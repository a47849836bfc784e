# florist-worker image: applies FLorist training events from a Redis stream to
# Job documents in MongoDB.  See deploy/README.md.
#
#   docker build -t florist-worker .
#   docker run --rm -e FLORIST_REDIS_URL=redis://redis:6379/0 \
#       -e FLORIST_MONGODB_URI=mongodb://mongodb:27017 florist-worker
#
# Two stages: the builder installs the package (with the `memory` extra, so
# FLORIST_MONGODB_URI=memory:// works) into a virtual environment; the final
# stage copies only that environment.  No compiler is installed in
# either stage: every dependency ships wheels for linux/amd64 and linux/arm64.
#
# Reproducible: every third-party distribution comes from deploy/requirements.lock,
# exact versions with their hashes (`./dev lock` refreshes it from the ranges in the
# pyproject.toml files); the two local distributions are built from this tree.

FROM python:3.11.11-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

RUN python -m venv /opt/venv
ENV PATH="/opt/venv/bin:${PATH}"

WORKDIR /src
# Every pinned dependency first (its own layer, rebuilt only when the lock changes).
# --require-hashes: a file whose hash is not in the lock is refused.
COPY deploy/requirements.lock ./
RUN pip install --require-hashes --no-deps -r requirements.lock

# Only what the build needs (see .dockerignore); README.md is the package's
# `readme` in pyproject.toml, so the build fails without it.  producer/ is the
# florist-events distribution the worker depends on; it is not on PyPI.
COPY pyproject.toml README.md ./
COPY producer/ ./producer/
COPY worker/ ./worker/

# Build wheels of the two local distributions (florist-events and the worker) with
# the locked setuptools, install those files with nothing from an index (--no-index),
# and check that every requirement, the `memory` extra's included, is met by the
# locked versions.  pip byte-compiles while installing, so the unprivileged user never
# needs to write __pycache__.  `--help` imports every sub-command: a broken install
# fails the build here.
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /dist ./producer . \
    && pip install --no-deps --no-index /dist/florist_events-*.whl /dist/florist_worker-*.whl \
    && pip uninstall --yes setuptools \
    && python -c 'import mongomock_ng, fakeredis' \
    && pip check \
    && florist-worker --help >/dev/null


FROM python:3.11.11-slim-bookworm AS final

LABEL org.opencontainers.image.title="florist-worker" \
      org.opencontainers.image.description="Applies FLorist training events from a Redis stream to MongoDB Job documents" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONFAULTHANDLER=1 \
    FLORIST_LOG_FORMAT=json

# A fixed, unprivileged uid/gid (no login shell, no home directory).
RUN groupadd --system --gid 10001 florist \
    && useradd --system --uid 10001 --gid florist --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin florist

COPY --from=builder /opt/venv /opt/venv
# The simulated job emitter used by `docker compose --profile demo up`.
COPY deploy/emitter.py /opt/florist-worker/emitter.py

WORKDIR /opt/florist-worker
USER 10001:10001

# `florist-worker healthcheck` exits 0 while this container's worker keeps its
# heartbeat file fresh (FLORIST_HEARTBEAT_FILE, default /tmp/florist-worker.heartbeat;
# stale after FLORIST_HEARTBEAT_TTL_S, default 45 s).
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["florist-worker", "healthcheck"]

# SIGTERM (docker stop) makes the worker finish its batch and exit cleanly.
STOPSIGNAL SIGTERM
ENTRYPOINT ["florist-worker"]
CMD ["run"]
