"""Wires the service together: the Thespian actor system, the actor tree, and its lifetime.

``Service`` brings up a multiprocTCPBase actor system on the configured admin port (each test
its own) and the supervisor, which builds the rest of the tree and answers once signals can
flow. ``stop`` drains (held writes are flushed) and shuts the actor system down: an admin
left running would keep serving the code it loaded first.

One service per admin port and per run_dir. ``claim`` makes sure of it before a start, and a
launcher records its actor system's session in ``run_dir/launcher.json``, so that what a dead
launcher left behind can be told from a live service and cleared. A launcher stops the tree
however it is stopped: SIGTERM, SIGINT, SIGHUP or its parent's death drain and stop it, and
if it is SIGKILLed the watchdog actor stops the tree it left.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from thespian.actors import ActorSystem, InvalidActorAddress

from actors.coordinator import Coordinator
from actors.supervisor import Supervisor
from actors.watchdog import Watchdog
from messages.actor import Drain, Drained, GetPeers, NotStarted, Peers, Ping, Pong, Start, Started, Watch
from messages.control import GetStatus, ServiceStatus
from service import metrics
from service.config import Settings
from service.processes import die_with_parent, kill_session, own_start, parent_of, session_members, started_at

log = logging.getLogger("execution-service")

SUPERVISOR_NAME = "execution-supervisor"
COORDINATOR_NAME = "execution-coordinator"
WATCHDOG_NAME = "execution-watchdog"
START_TIMEOUT_S = 120
HEALTH_INTERVAL_S = 1.0
PING_TIMEOUT_S = 5.0
MISSED_PINGS = 3
DRAIN_TIMEOUT_S = 60
GONE_CHECK_S = 1.0
JOIN_TIMEOUT_S = 3.0
EXIT_TIMEOUT_S = 10.0
RECORD = "launcher.json"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
T = TypeVar("T")


class Refused(Exception):
    """A command cannot do what it was asked; the message says why, in one line."""


def log_defs(settings: Settings) -> dict[str, Any]:
    """Every process logs to one file (and stderr); OrderActor lines carry the actor address."""
    log_dir = Path(settings.run_dir) / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    return {
        "version": 1,
        "formatters": {"plain": {"format": "%(asctime)s %(levelname)-7s %(name)s [%(process)d] %(message)s"}},
        "handlers": {
            "file": {"class": "logging.FileHandler", "filename": str(log_dir / "service.log"), "formatter": "plain"},
            "console": {"class": "logging.StreamHandler", "formatter": "plain", "level": "WARNING"},
        },
        "root": {"handlers": ["file", "console"], "level": settings.log_level},
        "disable_existing_loggers": False,
    }


# --- stop signals ---------------------------------------------------------------------------


class StopSignals:
    """SIGTERM, SIGINT, SIGHUP and the death of the launcher's parent (delivered as SIGHUP)
    all stop a launcher as Ctrl-C does: KeyboardInterrupt in the main thread, once. Any later
    one is ignored, so the drain that follows is not cut short."""

    def __init__(self) -> None:
        self.received: str | None = None
        self.deferring = False
        self.stopping = False
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._received)
        # The Thespian admin is forked from the launcher: it must not inherit these handlers.
        os.register_at_fork(after_in_child=self._restore_defaults)
        die_with_parent(signal.SIGHUP)

    def _received(self, signum: int, frame: Any) -> None:
        if self.stopping or self.received is not None:
            return
        self.received = signal.Signals(signum).name
        if not self.deferring:
            raise KeyboardInterrupt(self.received)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """A stop signal waits for the end of the block."""
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False
        if self.received is not None and not self.stopping:
            raise KeyboardInterrupt(self.received)

    def ignore(self) -> None:
        """The launcher is stopping: from now on a stop signal changes nothing."""
        self.stopping = True

    @staticmethod
    def _restore_defaults() -> None:
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)


# --- the launcher's record, and making way for a start ----------------------------------------


class LauncherRecord(msgspec.Struct, frozen=True):
    """Which launcher runs the actor system of a run_dir, and the system's session."""

    pid: int
    started: int  # the launcher's start time: a pid alone may have been reused
    admin_port: int
    session: int

    @property
    def launcher_alive(self) -> bool:
        # A launcher that re-executed itself (the restart of a dead tree) is its own successor.
        return self.pid != os.getpid() and started_at(self.pid) == self.started


def record_path(settings: Settings) -> Path:
    return Path(settings.run_dir) / RECORD


def read_record(settings: Settings) -> LauncherRecord | None:
    with contextlib.suppress(OSError, msgspec.DecodeError):
        return msgspec.json.decode(record_path(settings).read_bytes(), type=LauncherRecord)
    return None


def admin_port_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def chdb_holder(settings: Settings) -> str | None:
    """Who holds the lock of the embedded ClickHouse in run_dir, if anyone ("PID: n")."""
    status = Path(settings.run_dir) / "chdb" / "status"
    if settings.clickhouse_dsn or not status.exists():
        return None
    with status.open() as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when the file is closed
        except BlockingIOError:
            return status.read_text().partition("\n")[0] or "a process"
    return None


def wait_gone(session: int, timeout_s: float = EXIT_TIMEOUT_S) -> list[int]:
    """Wait for every process of a session to exit; those still there after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while (members := session_members(session)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return members


def wait_closed(port: int, timeout_s: float = EXIT_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while admin_port_open(port) and time.monotonic() < deadline:
        time.sleep(0.1)


def claim(settings: Settings) -> None:
    """Make way for a new launcher, or refuse (Refused) if a service is running on the admin
    port or from the run_dir. What a dead launcher left behind is cleared: only processes of
    the session it recorded, once nothing answers there as a live service with a launcher."""
    port = settings.admin_port
    record = read_record(settings)
    dead = record if record is not None and not record.launcher_alive else None
    if (joined := join(settings)) is not None:
        actor_system, supervisor, _ = joined
        if dead is None or dead.admin_port != port or session_of(actor_system, supervisor) != dead.session:
            raise Refused(f"execution-service is already running on admin port {port}")
        print(f"the service on admin port {port} lost its launcher (pid {dead.pid}): draining and stopping it", flush=True)
        stop(actor_system, supervisor, dead.session)
    if record is not None and record.launcher_alive:
        raise Refused(
            f"execution-service is already running on admin port {record.admin_port} "
            f"(launcher pid {record.pid}, run_dir {settings.run_dir})"
        )
    if dead is not None and (members := session_members(dead.session)):
        print(
            f"clearing leftovers of a dead execution-service (launcher pid {dead.pid}): "
            f"{len(members)} processes of its actor system, session {dead.session}",
            flush=True,
        )
        kill_session(dead.session)
        wait_gone(dead.session)
        wait_closed(port)  # the dead admin's listening socket goes with its last process
    if admin_port_open(port):
        raise Refused(f"admin port {port} is in use by a program that is not a running execution-service")
    if settings.partitions and not settings.clickhouse_dsn:
        raise Refused(
            f"partitions = {settings.partitions} shares the work between instances, which needs one ClickHouse server "
            "for all of them (clickhouse_dsn): the embedded store belongs to one process"
        )
    if (holder := chdb_holder(settings)) is not None:
        raise Refused(f"the embedded ClickHouse in {settings.run_dir}/chdb is locked by another process ({holder})")


# --- clients --------------------------------------------------------------------------------


def root_of(settings: Settings) -> tuple[type, str]:
    """The actor at the root of the tree, and its global name: the supervisor of a single
    instance, or the coordinator of one that shares the work (partitions)."""
    return (Coordinator, COORDINATOR_NAME) if settings.partitions else (Supervisor, SUPERVISOR_NAME)


def connect(settings: Settings) -> tuple[ActorSystem, Any]:
    """Join the running service's actor system as a client (CLI, tests): its system and the
    root (supervisor or coordinator). A transient system of its own, so a client can
    reconnect after a restart."""
    actor_system = ActorSystem("multiprocTCPBase", {"Admin Port": settings.admin_port}, transientUnique=True)
    root, name = root_of(settings)
    return actor_system, actor_system.createActor(root, globalName=name)


def join(settings: Settings, timeout_s: float = JOIN_TIMEOUT_S) -> tuple[ActorSystem, Any, Peers] | None:
    """Join the service on the admin port as a client if it answers as a started one (ingress,
    the last role to start, is up): its actor system, supervisor and peers. Never shutdown()
    such a client: that would stop the service."""
    if not admin_port_open(settings.admin_port):
        return None  # (else Thespian would start an admin of its own)
    try:
        actor_system, supervisor = connect(settings)
    except InvalidActorAddress:
        return None  # the port is held by something else
    peers = actor_system.ask(supervisor, GetPeers(), timeout_s)
    return (actor_system, supervisor, peers) if isinstance(peers, Peers) and started(settings, peers) else None


def started(settings: Settings, peers: Peers) -> bool:
    """Whether the root's peers say it has started: a supervisor once ingress, the last of its
    roles, is up; a coordinator once the instance has joined the others."""
    return (peers.supervisor if settings.partitions else peers.ingress) is not None


def ask_for(
    actor_system: ActorSystem, target: Any, message: Any, kind: type[T], timeout_s: float, gone: Callable[[], bool] | None = None
) -> T | None:
    """Ask and wait for an answer of ``kind``: a Thespian ask returns whatever reaches the
    asker first, which may be the late answer to an earlier ask (one that timed out, or that a
    signal interrupted). A message with an ``asked`` token (GetStatus) takes only the answer
    that carries it back. ``gone``, checked every GONE_CHECK_S, ends a long wait early: the
    target's process died."""
    token = getattr(message, "asked", None)

    def wanted(answer: Any) -> bool:
        return isinstance(answer, kind) and (token is None or getattr(answer, "asked", None) == token)

    deadline = time.monotonic() + timeout_s
    slice_s = timeout_s if gone is None else min(timeout_s, GONE_CHECK_S)
    answer = actor_system.ask(target, message, slice_s)
    while not wanted(answer) and (left := deadline - time.monotonic()) > 0:
        if gone is not None and gone():
            return None
        answer = actor_system.listen(min(left, slice_s))
    return answer if wanted(answer) else None


def supervisor_pid(actor_system: ActorSystem, supervisor: Any, timeout_s: float = JOIN_TIMEOUT_S) -> int:
    pong = ask_for(actor_system, supervisor, Ping(), Pong, timeout_s)
    if pong is None:
        raise RuntimeError(f"the supervisor did not answer within {timeout_s}s")
    return pong.pid


def session_of(actor_system: ActorSystem, supervisor: Any, timeout_s: float = JOIN_TIMEOUT_S) -> int:
    """The session of the actor system (every actor is forked inside the admin's session)."""
    return os.getsid(supervisor_pid(actor_system, supervisor, timeout_s))


def stop(actor_system: ActorSystem, supervisor: Any, session: int, drain: bool = True, tree_gone: Callable[[], bool] | None = None) -> None:
    """Drain (held writes reach ClickHouse, the archive and the status subjects), shut the
    actor system down, and kill whatever of its session outlives that. A tree that dies
    meanwhile is neither drained nor shut down (a SIGTERM to every process of the service at
    once, as systemd's default stop sends): what it held is in the outbox, for the next start."""
    if drain and ask_for(actor_system, supervisor, Drain(), Drained, DRAIN_TIMEOUT_S, tree_gone) is None:
        if tree_gone is not None and tree_gone():
            log.warning("the actor system died before the drain finished: the next start replays its outbox")
        else:
            log.error("drain did not finish within %ds; shutting down anyway", DRAIN_TIMEOUT_S)
    if tree_gone is None or not tree_gone():
        actor_system.shutdown()
    if left := wait_gone(session):
        log.warning("%d processes outlived the shutdown of the actor system: killed", len(left))
        kill_session(session)
        wait_gone(session)


# --- the service ----------------------------------------------------------------------------


class Service:
    """A running service: its actor system and the supervisor at the root of the tree."""

    def __init__(self, settings: Settings, signals: StopSignals) -> None:
        self.settings = settings
        self.signals = signals
        claim(settings)
        metrics.start_afresh()
        with signals.deferred():  # an admin forked but not yet handed back could not be stopped
            self.actor_system = ActorSystem("multiprocTCPBase", {"Admin Port": settings.admin_port}, logDefs=log_defs(settings))
        try:
            root, name = root_of(settings)
            self.supervisor = self.actor_system.createActor(root, globalName=name)
            pid = supervisor_pid(self.actor_system, self.supervisor, START_TIMEOUT_S)
            admin = parent_of(pid)  # the root actor is forked by the admin
            self.session, self.vital = os.getsid(pid), [(pid, started_at(pid)), (admin, started_at(admin))]
            launcher = LauncherRecord(os.getpid(), own_start(), settings.admin_port, self.session)
            record_path(settings).write_bytes(msgspec.json.encode(launcher))
            watchdog = self.actor_system.createActor(Watchdog, globalName=WATCHDOG_NAME)
            self.actor_system.tell(watchdog, Watch(launcher.pid, launcher.started, self.supervisor))
            started = self.actor_system.ask(self.supervisor, Start(settings), START_TIMEOUT_S)
            if isinstance(started, NotStarted):
                raise Refused(started.reason)
            if not isinstance(started, Started):
                raise RuntimeError(f"the service did not start within {START_TIMEOUT_S}s (got {started!r})")
        except BaseException:
            # No drain: what the recorder was handed is in its outbox, for the next start.
            self.actor_system.shutdown()
            raise
        self.peers = started.peers
        self.started = started
        log.info("service up on admin port %d; %d open orders recovered", settings.admin_port, started.open_orders)

    def ask(self, target: Any, message: Any, timeout_s: float = 10.0) -> Any:
        return self.actor_system.ask(target, message, timeout_s)

    def tell(self, target: Any, message: Any) -> None:
        self.actor_system.tell(target, message)

    def alive(self) -> bool:
        return isinstance(self.actor_system.ask(self.supervisor, Ping(), PING_TIMEOUT_S), Pong)

    def tree_gone(self) -> bool:
        """The root actor's process or the admin's is gone. Either way the tree cannot go on:
        it is dead or dying (a SIGTERM to every process kills the admin at once, while a
        supervisor that replaced a child dying of it waits for that new child to exit), and
        without its admin nothing can join it."""
        return any(started_at(pid) != start for pid, start in self.vital)

    def reconciled_after(self) -> float | None:
        """How long after the state was loaded the last recovered order was reconciled (None: not yet)."""
        status = ask_for(self.actor_system, self.supervisor, GetStatus(), ServiceStatus, HEALTH_INTERVAL_S)
        return status.reconciled_after_s if status is not None else None

    def stop(self) -> None:
        self.signals.ignore()
        stop(self.actor_system, self.supervisor, self.session, tree_gone=self.tree_gone)
        record_path(self.settings).unlink(missing_ok=True)


def run(settings: Settings) -> None:
    """Run until a stop signal (SIGTERM, SIGINT, SIGHUP, the parent's death), then drain and stop.

    The supervisor is the root of the tree: if it stops answering, whatever is left of the
    tree is killed and the service starts again from scratch (this process re-executes
    itself), which is the recovery path of a crash of the whole service.
    """
    if settings.metrics_port:
        metrics.collect_in(Path(settings.run_dir).resolve() / "metrics")
    signals = StopSignals()
    try:
        service = Service(settings, signals)
    except KeyboardInterrupt as received:
        print(f"{received}: stopped while starting", flush=True)
        return
    if settings.metrics_port:
        # Only now: a listening socket open when the admin forked would live on in every actor.
        metrics.serve(settings.metrics_port)
    print(f"execution-service running (admin port {settings.admin_port}, logs in {settings.run_dir}/logs); Ctrl-C stops it", flush=True)
    recovered, halt = service.started.open_orders, service.started.halt
    print(f"{recovered} open orders rebuilt from ClickHouse{', being reconciled with the broker' if recovered else ''}", flush=True)
    if halt is not None:
        print(f"trading is HALTED since {halt.since:%Y-%m-%d %H:%M:%S} UTC ({halt.reason}): signals are refused until resumed", flush=True)
    try:
        missed = 0
        reconciling = recovered > 0
        while True:
            time.sleep(HEALTH_INTERVAL_S)
            # A tree whose root or admin process is gone is dead at once; a supervisor that is only
            # slow to answer (a backlog of signals ahead of the ping) is given MISSED_PINGS * PING_TIMEOUT_S.
            missed = MISSED_PINGS if service.tree_gone() else 0 if service.alive() else missed + 1
            if reconciling and (took := service.reconciled_after()) is not None:
                print(f"recovery: all {recovered} open orders reconciled with the broker {took:.2f}s after the state was loaded", flush=True)
                reconciling = False
            if missed >= MISSED_PINGS:
                why = "its or the admin's process is gone" if service.tree_gone() else f"it has not answered {missed} pings"
                log.error("the supervisor is lost (%s): restarting the whole service", why)
                signals.ignore()
                kill_session(service.session)
                wait_gone(service.session)
                os.execv(sys.executable, [sys.executable, *sys.argv])
    except KeyboardInterrupt as received:
        print(f"{received}: draining...", flush=True)
    service.stop()
    print("stopped", flush=True)
