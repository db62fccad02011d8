"""Wires the service together: the Thespian actor system, the actor tree, and its lifetime.

``start`` brings up a multiprocTCPBase actor system on the configured admin port (each test
its own) and the supervisor, which builds the rest of the tree and answers once signals can
flow. ``stop`` drains (held writes are flushed) and shuts the actor system down: an admin
left running would keep serving the code it loaded first.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Any

from thespian.actors import ActorSystem

from actors.supervisor import Supervisor
from messages.actor import Drain, Drained, Start, Started
from service.config import Settings

log = logging.getLogger("execution-service")

SUPERVISOR_NAME = "execution-supervisor"
START_TIMEOUT_S = 120
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
        log.info("service up on admin port %d; %d open orders recovered", settings.admin_port, started.open_orders)

    def ask(self, target: Any, message: Any, timeout_s: float = 10.0) -> Any:
        return self.actor_system.ask(target, message, timeout_s)

    def tell(self, target: Any, message: Any) -> None:
        self.actor_system.tell(target, message)

    def stop(self) -> None:
        drained = self.actor_system.ask(self.supervisor, Drain(), DRAIN_TIMEOUT_S)
        if not isinstance(drained, Drained):
            log.error("drain did not finish within %ds; shutting down anyway", DRAIN_TIMEOUT_S)
        self.actor_system.shutdown()


def connect(settings: Settings) -> tuple[ActorSystem, Any]:
    """Join the running service's actor system (for the CLI): its system and supervisor."""
    actor_system = ActorSystem("multiprocTCPBase", {"Admin Port": settings.admin_port})
    return actor_system, actor_system.createActor(Supervisor, globalName=SUPERVISOR_NAME)


def run(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then drain and stop."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    service = Service(settings)
    print(f"execution-service running (admin port {settings.admin_port}, logs in {settings.run_dir}/logs); Ctrl-C stops it", flush=True)
    stop.wait()
    print("draining...", flush=True)
    service.stop()
    print("stopped", flush=True)
