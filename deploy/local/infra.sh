#!/usr/bin/env bash
# Local servers for development and tests: NATS (JetStream) and a single-node Kafka (KRaft).
#
#   deploy/local/infra.sh up [nats|kafka]...    start (default: both), wait until each really
#                                               answers, create the archive topic, then print
#                                               `export EXEC_NATS_URL=... EXEC_KAFKA_BOOTSTRAP=...`
#                                               on stdout:  eval "$(deploy/local/infra.sh up)"
#   deploy/local/infra.sh down [nats|kafka]...  stop by pid (TERM, wait, KILL after a grace period)
#   deploy/local/infra.sh status                one line per server; exit 3 if one is not running
#   deploy/local/infra.sh jars                  resolve the Kafka jars into the cache (setup.sh)
#   deploy/local/infra.sh nats-build            build nats-server $NATS_VERSION into the cache (setup.sh)
#   deploy/local/infra.sh nats-bin              print the nats-server binary `up` runs
#
# nats-server: the one built by `nats-build` when it is there (a current release), else the
# one on PATH (Debian's, 2.9.10 on Debian 12); NATS_SERVER names another binary.
#
# Environment: EXEC_RUN_DIR (default <repo>/.run), NATS_PORT (4222), NATS_MONITOR_PORT (8222),
# NATS_CONFIG (a nats-server config file, e.g. with authorization and tls blocks; the flags
# for address, ports, JetStream and store dir are added and take precedence),
# KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (9093), KAFKA_HEAP (512m), KAFKA_LOG4J (a log4j2 config
# file to use instead of deploy/kafka/log4j2.xml, e.g. one at INFO for debugging),
# EXEC_CACHE_DIR (~/.cache/execution-service), EXEC_PYTHON (<repo>/.venv/bin/python),
# EXEC_ARCHIVE_TOPIC / EXEC_ARCHIVE_PARTITIONS (read through service.config),
# INFRA_TIMEOUT (seconds to wait for a server to answer, 90), EXEC_INFRA_REGISTRY (a file: `up`
# appends its run dir to it, so a caller such as .ci/run can stop every server started under it).
#
# Layout of the run dir: nats.pid, nats.log, nats/ (JetStream store), kafka.pid,
# kafka/{server.properties,cluster.id,data/,logs/server.log,kafka.out}.
# Progress goes to stderr; only the export line goes to stdout.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
RUN="${EXEC_RUN_DIR:-$REPO/.run}"
NATS_PORT="${NATS_PORT:-4222}"
NATS_MONITOR_PORT="${NATS_MONITOR_PORT:-8222}"
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_HEAP="${KAFKA_HEAP:-512m}"
TIMEOUT="${INFRA_TIMEOUT:-90}"
CACHE="${EXEC_CACHE_DIR:-${HOME:-/root}/.cache/execution-service}"
POM="$REPO/deploy/kafka/pom.xml"
NATS_VERSION=v2.15.2
NATS_BUILT="$CACHE/nats-server-$NATS_VERSION/nats-server"
PY="${EXEC_PYTHON:-$REPO/.venv/bin/python}"
JAVA="${JAVA:-java}"

say() { echo "infra: $*" >&2; }
now_ms() { local t=${EPOCHREALTIME/./}; echo $((t / 1000)); }
since() { local ms=$(($(now_ms) - $1)); printf '%d.%03ds' $((ms / 1000)) $((ms % 1000)); }
die() { echo "infra: ERROR: $*" >&2; exit 1; }

kafka_version() { sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM" | head -n1; }
KAFKA_LIB="$CACHE/kafka-$(kafka_version)/lib"

# --- pids ------------------------------------------------------------------------------

# pid_of NAME: the pid recorded for NAME if that process is alive and is really ours
# (its command line names the server), else nothing. Guards against pid reuse.
pid_of() {
    local name=$1 pidfile="$RUN/$1.pid" pid marker
    [[ -s $pidfile ]] || return 0
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    case $name in nats) marker=nats-server ;; kafka) marker=kafka.Kafka ;; esac
    if alive "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$marker"; then
        echo "$pid"
    fi
}

# alive PID: the process exists and is not a zombie (an exited child nobody reaped yet).
alive() {
    local stat
    kill -0 "$1" 2>/dev/null || return 1
    { stat=$(<"/proc/$1/stat"); } 2>/dev/null || return 1
    stat=${stat##*) }
    [[ ${stat:0:1} != Z ]]
}

stop() {
    local name=$1 pid grace=30 i
    pid=$(pid_of "$name")
    if [[ -z $pid ]]; then
        rm -f "$RUN/$name.pid"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    # Kafka does a controlled shutdown (flushes logs, writes a clean-shutdown marker): give it time.
    for ((i = 0; i < grace * 10; i++)); do
        alive "$pid" || break
        sleep 0.1
    done
    if alive "$pid"; then
        say "$name (pid $pid) did not stop in ${grace}s, killing it"
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do alive "$pid" || break; sleep 0.1; done
    fi
    rm -f "$RUN/$name.pid"
    say "$name stopped (pid $pid)"
}

# spawn NAME LOGFILE CMD...: start CMD detached (own session, no stdin) and record its pid.
spawn() {
    local name=$1 log=$2
    shift 2
    # The inner shell writes its own pid and then execs the server, so the pid is the server's
    # whether or not setsid had to fork.
    setsid bash -c 'echo $$ >"$0"; exec "$@"' "$RUN/$name.pid" "$@" </dev/null >>"$log" 2>&1 &
    local i
    for ((i = 0; i < 50; i++)); do [[ -s $RUN/$name.pid ]] && return 0; sleep 0.1; done
    die "$name did not start (see $log)"
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# --- NATS ------------------------------------------------------------------------------

nats_ready() {
    # A real server answers a TCP connect with an INFO line; ours must have JetStream on,
    # and the monitoring endpoint must say JetStream is healthy.
    local line status
    { exec 3<>"/dev/tcp/127.0.0.1/$NATS_PORT"; } 2>/dev/null || return 1
    IFS= read -r -t 2 line <&3 || { exec 3<&-; return 1; }
    exec 3<&-
    [[ $line == INFO* && $line == *'"jetstream":true'* ]] || return 1
    { exec 3<>"/dev/tcp/127.0.0.1/$NATS_MONITOR_PORT"; } 2>/dev/null || return 1
    printf 'GET /healthz?js-enabled-only=true HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
    IFS= read -r -t 2 status <&3 || { exec 3<&-; return 1; }
    exec 3<&-
    [[ $status == *" 200 "* ]]
}

nats_bin() {
    if [[ -n ${NATS_SERVER:-} ]]; then echo "$NATS_SERVER"
    elif [[ -x $NATS_BUILT ]]; then echo "$NATS_BUILT"
    else command -v nats-server || die "nats-server not found: run deploy/local/setup.sh"
    fi
}

# Build nats-server from the Go module proxy once per version (about 40 s, then cached).
nats_build() {
    [[ -x $NATS_BUILT ]] && return 0
    command -v go >/dev/null || { say "go not found: not building nats-server $NATS_VERSION (PATH's is used)"; return 0; }
    local tmp
    say "building nats-server $NATS_VERSION into $(dirname "$NATS_BUILT")"
    mkdir -p "$CACHE"
    tmp=$(mktemp -d "$CACHE/nats-build.XXXXXX")
    if ! GOBIN="$tmp" GOFLAGS=-buildvcs=false go install "github.com/nats-io/nats-server/v2@$NATS_VERSION" >"$tmp.log" 2>&1; then
        cat "$tmp.log" >&2
        rm -rf "$tmp" "$tmp.log"
        die "go install nats-server@$NATS_VERSION failed"
    fi
    rm -f "$tmp.log"
    rm -rf "$(dirname "$NATS_BUILT")"
    mv "$tmp" "$(dirname "$NATS_BUILT")"
}

nats_up() {
    local pid start t0 bin config=()
    bin=$(nats_bin)
    [[ -n ${NATS_CONFIG:-} ]] && config=(-c "$NATS_CONFIG")
    start=$SECONDS t0=$(now_ms)
    pid=$(pid_of nats)
    if [[ -z $pid ]]; then
        port_busy "$NATS_PORT" && die "port $NATS_PORT is taken by another process (set NATS_PORT)"
        port_busy "$NATS_MONITOR_PORT" && die "port $NATS_MONITOR_PORT is taken (set NATS_MONITOR_PORT)"
        mkdir -p "$RUN/nats"
        spawn nats "$RUN/nats.log" "$bin" "${config[@]}" -js -a 127.0.0.1 -p "$NATS_PORT" \
            -m "$NATS_MONITOR_PORT" -sd "$RUN/nats" -n "exec-local-$NATS_PORT"
        pid=$(<"$RUN/nats.pid")
    fi
    until nats_ready; do
        if ! alive "$pid"; then
            tail -n 20 "$RUN/nats.log" >&2 || true
            rm -f "$RUN/nats.pid"
            die "nats-server exited (log: $RUN/nats.log)"
        fi
        if ((SECONDS - start > TIMEOUT)); then
            stop nats
            die "nats-server did not answer within ${TIMEOUT}s (log: $RUN/nats.log)"
        fi
        sleep 0.1
    done
    say "nats ready on 127.0.0.1:$NATS_PORT (monitor :$NATS_MONITOR_PORT, pid $pid, $("$bin" --version), $(since "$t0"))"
}

# --- Kafka -----------------------------------------------------------------------------

# Resolve the broker's jars once into the cache; a stamp with the pom's hash makes a second
# run instant and a pom change (version bump) re-resolve.
kafka_jars() {
    local stamp="$KAFKA_LIB/.pom.sha256" want tmp
    want=$(sha256sum "$POM" | cut -d' ' -f1)
    if [[ -f $stamp && $(<"$stamp") == "$want" ]]; then return 0; fi
    command -v mvn >/dev/null || die "mvn not found: run deploy/local/setup.sh"
    say "resolving Kafka $(kafka_version) jars from Maven Central into $KAFKA_LIB"
    mkdir -p "$(dirname "$KAFKA_LIB")"
    tmp=$(mktemp -d "$(dirname "$KAFKA_LIB")/lib.tmp.XXXXXX")
    if ! mvn -q -B -f "$POM" dependency:copy-dependencies -DoutputDirectory="$tmp" >"$tmp.log" 2>&1; then
        cat "$tmp.log" >&2
        rm -rf "$tmp" "$tmp.log"
        die "maven could not resolve $POM"
    fi
    rm -f "$tmp.log"
    echo "$want" >"$tmp/.pom.sha256"
    rm -rf "$KAFKA_LIB"
    mv "$tmp" "$KAFKA_LIB"
}

# The machine's java (17+); small heap, no console logging (log4j2.xml writes WARN+ to a file).
kafka_java() {
    KAFKA_JAVA=("$JAVA" -Xms64m -Xmx"$KAFKA_HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20
        -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true
        -Dkafka.logs.dir="$RUN/kafka/logs"
        -Dlog4j2.configurationFile="${KAFKA_LOG4J:-$REPO/deploy/kafka/log4j2.xml}"
        -cp "$KAFKA_LIB/*" "$@")
}

kafka_config() {
    # Written on every start so ports follow the environment. A static voter set (not
    # --standalone's dynamic quorum) keeps a formatted data dir valid when ports change.
    cat >"$RUN/kafka/server.properties" <<EOF
# Generated by deploy/local/infra.sh: single node, combined broker + controller (KRaft).
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$RUN/kafka/data
num.partitions=1
# Topics are made on purpose (service.kafka.ensure_topic), never by a stray produce or a
# metadata request (aiokafka's asks for auto-creation) with the wrong partition count.
auto.create.topics.enable=false
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=5
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=5
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# Light on a 2-core machine.
num.network.threads=2
num.io.threads=2
background.threads=2
num.recovery.threads.per.data.dir=1
log.cleaner.threads=1
EOF
}

kafka_format() {
    # First start only: a cluster id kept in the run dir, storage formatted with it.
    [[ -f $RUN/kafka/data/meta.properties ]] && return 0
    local cid
    if [[ -s $RUN/kafka/cluster.id ]]; then
        cid=$(<"$RUN/kafka/cluster.id")
    else
        # Kafka's cluster ids are 16 random bytes in URL-safe base64 without padding; one
        # starting with '-' would read as an option, so draw again.
        cid=-
        while [[ $cid == -* ]]; do
            cid=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
        done
        echo "$cid" >"$RUN/kafka/cluster.id"
    fi
    kafka_java kafka.tools.StorageTool format -t "$cid" -c "$RUN/kafka/server.properties"
    "${KAFKA_JAVA[@]}" >"$RUN/kafka/format.log" 2>&1 || { cat "$RUN/kafka/format.log" >&2; die "kafka storage format failed"; }
}

kafka_up() {
    command -v "$JAVA" >/dev/null || die "java not found: run deploy/local/setup.sh"
    [[ -x $PY ]] || die "$PY not found: run deploy/local/setup.sh (or set EXEC_PYTHON)"
    local pid t0
    t0=$(now_ms)
    kafka_jars
    pid=$(pid_of kafka)
    if [[ -z $pid ]]; then
        port_busy "$KAFKA_PORT" && die "port $KAFKA_PORT is taken by another process (set KAFKA_PORT)"
        port_busy "$KAFKA_CONTROLLER_PORT" && die "port $KAFKA_CONTROLLER_PORT is taken (set KAFKA_CONTROLLER_PORT)"
        mkdir -p "$RUN/kafka/data" "$RUN/kafka/logs"
        kafka_config
        kafka_format
        kafka_java kafka.Kafka "$RUN/kafka/server.properties"
        spawn kafka "$RUN/kafka/kafka.out" "${KAFKA_JAVA[@]}"
        pid=$(<"$RUN/kafka.pid")
    fi
    # Ready means a real metadata round trip, then the archive topic exists with its
    # partitions: service.kafka.ensure_topic, retried until the broker takes it.
    if ! KAFKA_PID=$pid INFRA_TIMEOUT=$TIMEOUT EXEC_KAFKA_BOOTSTRAP="127.0.0.1:$KAFKA_PORT" \
        PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "$PY" - <<'PY'
import asyncio, logging, os, sys, time

logging.basicConfig(level=logging.CRITICAL)  # aiokafka logs every refused connect
from service.config import load_settings
from service.kafka import ensure_topic

settings = load_settings()
start = time.monotonic()
pid, deadline = int(os.environ["KAFKA_PID"]), start + float(os.environ["INFRA_TIMEOUT"])
last: BaseException | None = None
told = ""
while time.monotonic() < deadline:
    try:
        with open(f"/proc/{pid}/stat") as f:
            exited = f.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        exited = True
    if exited:
        sys.exit("kafka exited")
    try:
        asyncio.run(asyncio.wait_for(ensure_topic(settings), 15))
        print(f"infra: topic {settings.archive_topic} ({settings.archive_partitions} partitions) ready", file=sys.stderr)
        sys.exit(0)
    except Exception as exc:  # not up yet: refused, no controller yet, timeouts
        last = exc
        # A normal start takes a few seconds and says nothing; a slow one says why, once per
        # distinct error (a persistent one is then visible long before the timeout).
        if time.monotonic() - start > 10 and repr(exc) != told:
            told = repr(exc)
            print(f"infra: kafka not ready after {time.monotonic() - start:.0f}s: {told}", file=sys.stderr)
        time.sleep(0.3)
sys.exit(f"kafka did not answer in time: {last!r}")
PY
    then
        tail -n 20 "$RUN/kafka/logs/server.log" "$RUN/kafka/kafka.out" >&2 2>/dev/null || true
        stop kafka
        die "kafka is not ready (logs: $RUN/kafka/logs/server.log, $RUN/kafka/kafka.out)"
    fi
    say "kafka ready on 127.0.0.1:$KAFKA_PORT (controller :$KAFKA_CONTROLLER_PORT, pid $pid, $(since "$t0"))"
}

# --- commands --------------------------------------------------------------------------

services() { if (($# == 0)); then echo nats kafka; else echo "$@"; fi; }

cmd=${1:-}
shift || true
for s in "$@"; do [[ $s == nats || $s == kafka ]] || die "unknown server '$s' (nats|kafka)"; done

case $cmd in
up)
    mkdir -p "$RUN"
    RUN="$(cd "$RUN" && pwd)"
    if [[ -n ${EXEC_INFRA_REGISTRY:-} ]]; then echo "$RUN" >>"$EXEC_INFRA_REGISTRY"; fi
    exports=()
    for s in $(services "$@"); do
        case $s in
        nats) nats_up; exports+=("EXEC_NATS_URL=nats://127.0.0.1:$NATS_PORT") ;;
        kafka) kafka_up; exports+=("EXEC_KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_PORT") ;;
        esac
    done
    echo "export ${exports[*]}"
    ;;
down)
    [[ -d $RUN ]] || exit 0
    for s in $(services "$@"); do stop "$s"; done
    ;;
status)
    rc=0
    for s in nats kafka; do
        pid=$(pid_of "$s")
        if [[ -n $pid ]]; then
            case $s in
            nats) printf '%-6s running  pid %-7s nats://127.0.0.1:%s (monitor :%s)\n' nats "$pid" "$NATS_PORT" "$NATS_MONITOR_PORT" ;;
            kafka) printf '%-6s running  pid %-7s 127.0.0.1:%s (controller :%s)\n' kafka "$pid" "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" ;;
            esac
        else
            printf '%-6s stopped\n' "$s"
            rc=3
        fi
    done
    exit $rc
    ;;
jars)
    kafka_jars
    say "Kafka $(kafka_version) jars in $KAFKA_LIB"
    ;;
nats-build)
    nats_build
    ;;
nats-bin)
    nats_bin
    ;;
*)
    echo "usage: $0 up|down|status [nats|kafka]... | jars | nats-build | nats-bin" >&2
    exit 2
    ;;
esac
