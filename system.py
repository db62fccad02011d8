"""Wires the service together: the Thespian actor system, the actor tree, and its lifetime.

``start`` brings up a multiprocTCPBase actor system on the configured admin port (each test
its own) and the supervisor, which builds the rest of the tree and answers once signals can
flow. ``stop`` drains (held writes are flushed) and shuts the actor system down: an admin
left running would keep serving the code it loaded first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from thespian.actors import ActorSystem

from actors.supervisor import Supervisor
from messages.actor import Drain, Drained, Ping, Pong, Start, Started
from service.config import Settings

log = logging.getLogger("execution-service")

SUPERVISOR_NAME = "execution-supervisor"
START_TIMEOUT_S = 120
HEALTH_INTERVAL_S = 1.0
MISSED_PINGS = 3
DRAIN_TIMEOUT_S = 60


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


class Service:
    """A running service: its actor system and the supervisor at the root of the tree."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.actor_system = ActorSystem(
            "multiprocTCPBase", {"Admin Port": settings.admin_port}, logDefs=log_defs(settings)
        )
        self.supervisor = self.actor_system.createActor(Supervisor, globalName=SUPERVISOR_NAME)
        started = self.actor_system.ask(self.supervisor, Start(settings), START_TIMEOUT_S)
        if not isinstance(started, Started):
            self.actor_system.shutdown()
            raise RuntimeError(f"the service did not start within {START_TIMEOUT_S}s (got {started!r})")
        self.peers = started.peers
        pong = self.actor_system.ask(self.supervisor, Ping(), START_TIMEOUT_S)
        self.session = os.getsid(pong.pid)
        log.info("service up on admin port %d; %d open orders recovered", settings.admin_port, started.open_orders)

    def ask(self, target: Any, message: Any, timeout_s: float = 10.0) -> Any:
        return self.actor_system.ask(target, message, timeout_s)

    def tell(self, target: Any, message: Any) -> None:
        self.actor_system.tell(target, message)

    def alive(self) -> bool:
        return isinstance(self.actor_system.ask(self.supervisor, Ping(), HEALTH_INTERVAL_S), Pong)

    def stop(self) -> None:
        drained = self.actor_system.ask(self.supervisor, Drain(), DRAIN_TIMEOUT_S)
        if not isinstance(drained, Drained):
            log.error("drain did not finish within %ds; shutting down anyway", DRAIN_TIMEOUT_S)
        self.actor_system.shutdown()


def connect(settings: Settings) -> tuple[ActorSystem, Any]:
    """Join the running service's actor system as a client (CLI, tests): its system and the
    supervisor. A transient system of its own, so a client can reconnect after a restart."""
    actor_system = ActorSystem("multiprocTCPBase", {"Admin Port": settings.admin_port}, transientUnique=True)
    return actor_system, actor_system.createActor(Supervisor, globalName=SUPERVISOR_NAME)


def session_members(session: int) -> list[int]:
    """Every process of a session, from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[3]) == session:
                members.append(int(stat.parent.name))
    return members


def kill_session(session: int) -> None:
    """SIGKILL to every process of the actor system: the Thespian admin daemonises into a
    session of its own, and every actor process is forked inside it."""
    for pid in session_members(session):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def run(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then drain and stop.

    The supervisor is the root of the tree: if it stops answering, whatever is left of the
    tree is killed and the service starts again from scratch (this process re-executes
    itself), which is the recovery path of a crash of the whole service.
    """
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    service = Service(settings)
    print(f"execution-service running (admin port {settings.admin_port}, logs in {settings.run_dir}/logs); Ctrl-C stops it", flush=True)
    missed = 0
    while not stop.wait(HEALTH_INTERVAL_S):
        missed = 0 if service.alive() else missed + 1
        if missed >= MISSED_PINGS and not stop.is_set():
            log.error("the supervisor has not answered %d pings: restarting the whole service", missed)
            kill_session(service.session)
            os.execv(sys.executable, [sys.executable, *sys.argv])
    print("draining...", flush=True)
    service.stop()
    print("stopped", flush=True)
