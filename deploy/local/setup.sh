#!/usr/bin/env bash
# Install what the service and its tests need on a fresh Debian 12 machine, idempotently:
#   - nats-server (Debian package; JetStream with -js), Java 17+ and Maven (apt, if missing),
#   - a current nats-server built with Go from the Go module proxy into the cache (infra.sh
#     nats-build; once per version, about 40 s), which infra.sh prefers to Debian's 2.9.10,
#   - the Kafka broker's jars, resolved from Maven Central into the cache (deploy/kafka/pom.xml),
#   - <repo>/.venv with the project installed editable, test extras included.
# A second run only checks and returns in a second or two. Runs as root (apt-get), or uses
# sudo when it is there. Progress is one line per step on stderr; any failure stops it loudly.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV="$REPO/.venv"

say() { echo "setup: $*" >&2; }
die() { echo "setup: ERROR: $*" >&2; exit 1; }

# --- system packages -------------------------------------------------------------------

java_major() {
    # `java -version` prints e.g.: openjdk version "17.0.15" 2025-04-15; 0 when there is none.
    local v=""
    command -v java >/dev/null && v=$(java -version 2>&1 | sed -n 's/.* version "\([0-9]*\).*/\1/p' | head -n1)
    echo "${v:-0}"
}

apt_install() {
    local sudo=() log
    if ((EUID != 0)); then
        command -v sudo >/dev/null || die "need root (or sudo) to install: $*"
        sudo=(sudo)
    fi
    say "installing $* (apt)"
    log=$(mktemp)
    if ! { "${sudo[@]}" apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$@"
    } >"$log" 2>&1; then
        cat "$log" >&2
        die "apt-get install $* failed"
    fi
    rm -f "$log"
}

missing=()
command -v nats-server >/dev/null || missing+=(nats-server)
(($(java_major) >= 17)) || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
command -v "$PYTHON" >/dev/null || missing+=(python3 python3-venv)
command -v setsid >/dev/null || missing+=(util-linux)
((${#missing[@]} == 0)) || apt_install "${missing[@]}"
command -v nats-server >/dev/null || die "nats-server still missing"
(($(java_major) >= 17)) || die "java 17+ needed, found: $(java -version 2>&1 | head -n1)"
say "nats-server $(nats-server --version | sed 's/^nats-server: //'), java $(java_major), $(mvn -v 2>/dev/null | head -n1 | sed 's/\x1b\[[0-9;]*m//g')"

# --- Kafka broker jars -----------------------------------------------------------------

bash "$REPO/deploy/local/infra.sh" jars

# --- a current nats-server -------------------------------------------------------------

bash "$REPO/deploy/local/infra.sh" nats-build
nats_bin=$(bash "$REPO/deploy/local/infra.sh" nats-bin)
say "NATS runs $nats_bin ($("$nats_bin" --version | sed 's/^nats-server: //'))"

# --- Python environment ----------------------------------------------------------------

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "$PYTHON is $("$PYTHON" --version 2>&1); the project needs Python 3.11+"
if [[ ! -x $VENV/bin/python ]]; then
    say "creating $VENV"
    if ! "$PYTHON" -m venv "$VENV" >/dev/null 2>&1; then
        # Debian's python3 makes venvs with pip only once python3-venv is installed.
        rm -rf "$VENV"
        apt_install python3-venv
        "$PYTHON" -m venv "$VENV" || die "could not create $VENV"
    fi
fi
# Reinstall only when pyproject.toml changed since the last install (pip is slow to say
# "nothing to do" for an editable install: it builds the metadata again).
stamp="$VENV/.execution-service-installed"
want=$(sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1)
if [[ ! -f $stamp || $(<"$stamp") != "$want" ]] || ! "$VENV/bin/python" -c 'import service, pytest' 2>/dev/null; then
    say "installing the project into $VENV (pip install -e '.[test]')"
    log=$(mktemp)
    if ! (cd "$REPO" && "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[test]') >"$log" 2>&1; then
        cat "$log" >&2
        die "pip install failed"
    fi
    rm -f "$log"
    echo "$want" >"$stamp"
fi
say "ready: $("$VENV/bin/python" --version), venv $VENV; the command is $VENV/bin/execution-service (not on PATH)"
