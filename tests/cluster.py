"""Several instances of the service sharing the work, as they run in production: one NATS
server, one ClickHouse server (the project's HTTP front, tests/clickhouse_http.py), one Kafka
broker and one simulated connector, and N launchers (``python -m service.cli run``), each
with its own admin port, run dir and instance id, in a session of its own so that it can be
killed whole, as a machine that dies.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import uuid
from pathlib import Path
from signal import SIGKILL
from typing import Any

import clickhouse_connect
import msgspec
from harness import (
    NatsProbe,
    NatsServer,
    cli,
    clickhouse_front,
    control,
    launch,
    read_archive,
    start_simulator,
    wait_until,
)
from harness import stop as stop_launcher
from ports import free_port

from messages.actor import Ping, Pong
from messages.control import GetStatus, InstanceStatus
from messages.order import OrderEvent, order_id_for
from service.config import Settings, load_settings
from service.processes import kill_session, session_members
from simulator.control import SimStatus
from system import ask_for, join, wait_closed, wait_gone


class Instance:
    """One launcher of the cluster."""

    def __init__(self, base: Settings, name: str, run_dir: Path) -> None:
        self.name = name
        self.settings = msgspec.structs.replace(
            base, run_dir=str(run_dir), admin_port=free_port(), metrics_port=free_port(), instance_id=name
        )
        self.logs = run_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.launcher: subprocess.Popen[bytes] | None = None
        # The launcher's session and its actor system's (the admin forks into one of its own).
        self.sessions: set[int] = set()

    def start(self) -> None:
        self.launcher = launch(self.settings, self.logs)

    def joined(self) -> bool:
        if self.launcher is not None and self.launcher.poll() is not None:
            raise AssertionError(f"instance {self.name} exited with {self.launcher.returncode}; see {self.logs}/launcher.log")
        found = join(self.settings, 2.0)
        if found is None:
            return False
        self.actor_system, self.coordinator, _ = found
        pong = self.actor_system.ask(self.coordinator, Ping(), 5)
        if not isinstance(pong, Pong) or self.launcher is None:
            return False
        self.sessions = {os.getsid(self.launcher.pid), os.getsid(pong.pid)}
        return True

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return cli(self.settings, *args)

    def status(self) -> InstanceStatus | None:
        return ask_for(self.actor_system, self.coordinator, GetStatus(), InstanceStatus, 5.0)

    def kill(self) -> float:
        """SIGKILL to the launcher and every process of its actor system, at once; when."""
        if self.launcher is None:
            raise RuntimeError(f"instance {self.name} is not running")
        killed_at = time.monotonic()
        # The actor system's session first: its watchdog would start a drain once the launcher is gone.
        for session in sorted(self.sessions, key=lambda s: s == self.launcher.pid):
            kill_session(session)
        self.launcher.kill()
        self.launcher.wait(10)
        self.launcher = None
        for session in self.sessions:
            if wait_gone(session):
                raise AssertionError(f"processes of instance {self.name} survived SIGKILL")
        wait_closed(self.settings.admin_port)
        return killed_at

    def stop(self) -> None:
        if self.launcher is not None:
            stop_launcher(self.launcher)
            self.launcher = None


class Cluster:
    """``instances`` instances sharing ``partitions`` partitions of the work."""

    def __init__(self, tmp: Path, kafka_bootstrap: str, instances: int, partitions: int, sim_env: dict[str, str] | None = None, **overrides: Any) -> None:
        self.tmp = tmp
        self.stack = contextlib.ExitStack()
        self.sim: subprocess.Popen[bytes] | None = None
        self.instances: list[Instance] = []
        try:
            self.nats = NatsServer(tmp / "nats-run")
            self.stack.callback(self.nats.stop)
            address = self.stack.enter_context(clickhouse_front(tmp / "clickhouse"))
            self.settings = load_settings(
                {},
                run_dir=str(tmp / "shared"),
                nats_url=self.nats.url,
                kafka_bootstrap=kafka_bootstrap,
                clickhouse_dsn=f"http://{address}",
                archive_topic=f"archive_{uuid.uuid4().hex[:8]}",
                partitions=partitions,
                **overrides,
            )
            self.logs = Path(self.settings.run_dir) / "logs"
            self.logs.mkdir(parents=True, exist_ok=True)
            self.clickhouse = clickhouse_connect.get_client(dsn=self.settings.clickhouse_dsn)
            self.stack.callback(self.clickhouse.close)
            # The schema once, before the instances start (as README says: `migrate` first).
            migrated = cli(self.settings, "migrate")
            if migrated.returncode != 0:
                raise RuntimeError(f"migrate failed: {migrated.stderr}")
            watch = ["orders.>", "signals.deadletter"]
            self.probe = NatsProbe(self.nats.url, watch)
            self.stack.callback(self.probe.close)
            self.sim = start_simulator(self.settings, tmp, self.logs, self.probe, sim_env or {})
            self.instances = [Instance(self.settings, f"i{n}", tmp / f"i{n}") for n in range(instances)]
            for instance in self.instances:
                instance.start()
            for instance in self.instances:
                wait_until(instance.joined, 60, 0.2, f"instance {instance.name} to join")
        except BaseException:
            self.close()
            raise

    # --- what the invariants read (tests/chaos.py) ----------------------------------------------

    def query(self, sql: str, **parameters: Any) -> list[tuple[Any, ...]]:
        return list(self.clickhouse.query(sql, parameters=parameters).result_rows)

    def archive(self, idle_s: float = 1.5) -> list[OrderEvent]:
        return read_archive(self.settings, idle_s)

    def control(self, **switches: Any) -> SimStatus:
        return control(self.probe, self.sim, **switches)

    def send(self, payload: dict[str, Any]) -> uuid.UUID:
        self.probe.publish(f"signals.approved.{payload['symbol']}", msgspec.json.encode(payload))
        return order_id_for(uuid.UUID(payload["signal_id"]))

    # --- who serves what ----------------------------------------------------------------------

    def running(self) -> list[Instance]:
        return [instance for instance in self.instances if instance.launcher is not None]

    def serving(self) -> dict[int, tuple[str, InstanceStatus]]:
        """partition -> (instance, its status) for every partition a running instance serves."""
        found: dict[int, tuple[str, InstanceStatus]] = {}
        for instance in self.running():
            status = instance.status()
            if status is None:
                continue
            for partition, tree in status.serving.items():
                if tree is not None:
                    found[partition] = (instance.name, status)
        return found

    def held(self) -> dict[int, str]:
        """partition -> the running instance holding its lease (its tree may still be starting)."""
        found: dict[int, str] = {}
        for instance in self.running():
            if (status := instance.status()) is not None:
                found.update(dict.fromkeys(status.serving, instance.name))
        return found

    def all_served_and_reconciled(self) -> dict[int, str]:
        """partition -> instance when every partition is served by a running instance and every
        order it rebuilt is reconciled with the broker; else empty."""
        serving = self.serving()
        if len(serving) != self.settings.partitions:
            return {}
        for partition, (_, status) in serving.items():
            tree = status.serving[partition]
            if tree is None or tree.reconciling_orders:
                return {}
        return {partition: name for partition, (name, _) in serving.items()}

    def close(self) -> None:
        try:
            for instance in self.instances:
                instance.stop()
            if self.sim is not None:
                self.sim.terminate()
                self.sim.wait(10)
        finally:
            self.stack.close()
            for instance in self.instances:
                for session in instance.sessions:
                    for pid in session_members(session):
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, SIGKILL)

