#!/usr/bin/env bash
# Builds a stand-in for the Dockerfile's base image from Debian packages, for machines that
# reach Debian's archive and PyPI but no container registry, and tags it with the name the
# Dockerfile's FROM lines use, so that `docker build` then runs unchanged.
#
#   deploy/debian-base.sh            (as root; needs mmdebstrap and a running Docker engine)
#
# The stand-in is Debian bookworm's python3 (3.11, as the real image), with python-is-python3
# (the Dockerfile calls `python`), python3-venv and ca-certificates. The machine's own CA
# bundle replaces Debian's, so pip inside the build trusts what this machine trusts (a TLS
# proxy's certificate included). It is a stand-in for building and testing the image here,
# not an image to ship: a release build uses the real base image from its registry.
set -euo pipefail
cd "$(dirname "$0")/.."

base=$(sed -n 's/^FROM \([^ ]*\) AS builder$/\1/p' Dockerfile)
if [ -z "$base" ]; then
    echo "debian-base: no 'FROM <image> AS builder' line in Dockerfile" >&2
    exit 1
fi
for tool in mmdebstrap docker; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "debian-base: $tool is missing (Debian: apt-get install -y mmdebstrap docker.io)" >&2
        exit 1
    fi
done
cabundle=/etc/ssl/certs/ca-certificates.crt
echo "debian-base: building $base from Debian bookworm packages" >&2
mmdebstrap --quiet --variant=minbase \
    --include=python3,python3-venv,python-is-python3,ca-certificates \
    --customize-hook="cat $cabundle > \"\$1$cabundle\"" \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    bookworm - |
    docker import \
        --change 'ENV LANG=C.UTF-8' \
        --change "ENV PIP_CERT=$cabundle" \
        --change 'CMD ["python3"]' \
        - "$base" >/dev/null
echo "debian-base: tagged $base" >&2
