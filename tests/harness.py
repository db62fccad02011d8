"""The running system as tests drive it: a NATS server of its own, the simulated connector
as a separate process, and the multi-process actor system, all real.

Each RunningSystem uses its own NATS server (JetStream streams and durable consumers start
empty), its own Thespian admin port, its own chdb directory and its own Kafka topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from signal import SIGKILL, SIGTERM
from typing import Any, TypeVar

import msgspec
import nats
from aiokafka import AIOKafkaConsumer
from ports import free_port

from messages.actor import (
    GetPeers,
    GetPositions,
    Peers,
    Ping,
    PositionsSnapshot,
    Query,
    QueryResult,
    ShowOrder,
)
from messages.codec import decode, encode
from messages.order import OrderEvent, order_id_for
from service.config import Settings, load_settings
from service.processes import pids
from simulator.control import CONTROL_SUBJECT, SimControl, SimStatus
from system import connect, kill_session, wait_closed, wait_gone

REPO = Path(__file__).resolve().parent.parent
INFRA = REPO / "deploy/local/infra.sh"
T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout_s: float = 15.0, interval_s: float = 0.05, what: str = "") -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what or predicate}")
        time.sleep(interval_s)


@contextlib.contextmanager
def clickhouse_front(base: Path, *options: str) -> Iterator[str]:
    """tests/clickhouse_http.py (ClickHouse's engine behind its HTTP interface) on a free port,
    its data under ``base``: yields ``host:port``; stopped at the end."""
    base.mkdir(parents=True, exist_ok=True)
    with open(base / "server.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "tests" / "clickhouse_http.py"), "--port", "0", "--path", str(base / "data"), *options],
            stdout=subprocess.PIPE, stderr=log, cwd=REPO,
        )  # fmt: skip
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60) if proc.stdout is not None else ([], [], [])
        line = proc.stdout.readline().decode() if ready and proc.stdout is not None else ""
        if not line.startswith("listening on "):
            raise RuntimeError(f"clickhouse_http.py did not start: {line!r}\n{(base / 'server.log').read_text()}")
        yield line.split()[-1]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class NatsServer:
    """A private nats-server (JetStream on), started and stopped through deploy/local/infra.sh;
    ``config``: a nats-server config file (authorization, tls) under infra.sh's flags."""

    def __init__(self, run_dir: Path, config: Path | None = None) -> None:
        self.run_dir = run_dir
        self.port = free_port()
        self.env = {**os.environ, "EXEC_RUN_DIR": str(run_dir), "NATS_PORT": str(self.port), "NATS_MONITOR_PORT": str(free_port())}
        if config is not None:
            self.env["NATS_CONFIG"] = str(config)
        subprocess.run(["bash", str(INFRA), "up", "nats"], env=self.env, check=True, stdout=subprocess.DEVNULL)
        self.url = f"nats://127.0.0.1:{self.port}"

    def stop(self) -> None:
        subprocess.run(["bash", str(INFRA), "down", "nats"], env=self.env, check=False, stdout=subprocess.DEVNULL)

    def restart(self) -> None:
        self.stop()
        subprocess.run(["bash", str(INFRA), "up", "nats"], env=self.env, check=True, stdout=subprocess.DEVNULL)


class KafkaServer:
    """A Kafka broker of its own (through deploy/local/infra.sh), for a test that stops it."""

    def __init__(self, run_dir: Path) -> None:
        self.env = {**os.environ, "EXEC_RUN_DIR": str(run_dir), "KAFKA_PORT": str(free_port()), "KAFKA_CONTROLLER_PORT": str(free_port())}
        self.start()
        self.bootstrap = f"127.0.0.1:{self.env['KAFKA_PORT']}"

    def _infra(self, action: str) -> None:
        subprocess.run(["bash", str(INFRA), action, "kafka"], env=self.env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start(self) -> None:
        self._infra("up")

    def stop(self) -> None:
        self._infra("down")


class NatsProbe:
    """A NATS client on its own loop thread: publishes signals, watches subjects, asks requests."""

    def __init__(self, url: str, watch: list[str], **options: Any) -> None:
        """``options``: nats.connect's credentials and TLS (Settings.nats_connect_options())."""
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.seen: dict[str, list[tuple[str, bytes]]] = {pattern: [] for pattern in watch}
        self._run(self._connect(url, watch, options))

    def _run(self, coro: Any, timeout_s: float = 15.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    async def _connect(self, url: str, watch: list[str], options: dict[str, Any]) -> None:
        self.nc = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.2, **options)
        self.js = self.nc.jetstream()
        for pattern in watch:

            async def collect(msg: Any, pattern: str = pattern) -> None:
                self.seen[pattern].append((msg.subject, msg.data))

            await self.nc.subscribe(pattern, cb=collect)
        await self.nc.flush()

    def publish(self, subject: str, payload: bytes, headers: dict[str, str] | None = None) -> None:
        async def publish() -> None:
            await self.js.publish(subject, payload, headers=headers)

        self._run(publish())

    def publish_concurrently(self, subject: str, payloads: list[bytes]) -> None:
        async def publish_all() -> None:
            await asyncio.gather(*(self.js.publish(subject, payload) for payload in payloads))

        self._run(publish_all())

    def request(self, subject: str, payload: bytes, timeout_s: float = 5.0) -> bytes:
        async def request() -> bytes:
            return (await self.nc.request(subject, payload, timeout=timeout_s)).data

        return self._run(request(), timeout_s + 1)

    def close(self) -> None:
        self._run(self.nc.close())
        self.loop.call_soon_threadsafe(self.loop.stop)


def signal(symbol: str = "EURUSD", signal_type: str = "buy", volume: float = 0.1, entry: float | None = None, **fields: Any) -> dict[str, Any]:
    from messages.symbols import SYMBOLS

    now = datetime.now(UTC).isoformat()
    return {
        "signal_id": str(uuid.uuid4()),
        "symbol": symbol,
        "signal_type": signal_type,
        "position_size_recommended": volume,
        "entry_price": entry if entry is not None else SYMBOLS[symbol].start_price,
        "risk_approval_status": "approved",
        "timeframe": "H1",
        "signal_timestamp": now,
        "created_at": now,
        "model_version": "test",
        "confidence_score": 0.7,
        **fields,
    }


class RunningSystem:
    """The service as production runs it (``python -m service.cli run``, its own process group),
    beside the simulated connector; the test talks to it as a client of its actor system."""

    def __init__(
        self,
        tmp: Path,
        kafka_bootstrap: str,
        sim_env: dict[str, str] | None = None,
        prepare: Callable[[Settings], None] | None = None,
        nats_config: Path | None = None,
        **overrides: Any,
    ) -> None:
        """``prepare`` runs before the service starts (it may write to the store then);
        ``nats_config`` is the nats-server's config file (the NATS options go in ``overrides``)."""
        self.tmp = tmp
        self.nats = NatsServer(tmp / "nats-run", nats_config)
        overrides.setdefault("metrics_port", free_port())  # (the default port would be shared by every test)
        self.settings: Settings = load_settings(
            {},
            run_dir=str(tmp / "run"),
            nats_url=self.nats.url,
            kafka_bootstrap=kafka_bootstrap,
            admin_port=free_port(),
            archive_topic=f"archive_{uuid.uuid4().hex[:8]}",
            **overrides,
        )
        self.logs = Path(self.settings.run_dir, "logs")
        self.logs.mkdir(parents=True, exist_ok=True)
        watch = ["orders.>", "signals.deadletter", "signals.alert", "positions.alert"]
        self.probe = NatsProbe(self.nats.url, watch, **self.settings.nats_connect_options())
        self.sim_env = sim_env or {}
        self.sim: subprocess.Popen[bytes] | None = None
        self.launcher: subprocess.Popen[bytes] | None = None
        try:
            if prepare is not None:
                prepare(self.settings)
            self.start_simulator()
            self.start_service()
        except BaseException:
            self.close()
            raise

    # --- processes ------------------------------------------------------------------------------

    def start_simulator(self) -> None:
        self.sim = start_simulator(self.settings, self.tmp, self.logs, self.probe, self.sim_env)

    def stop_simulator(self) -> None:
        if self.sim is not None:
            self.sim.terminate()
            self.sim.wait(10)
            self.sim = None

    def service_env(self) -> dict[str, str]:
        return service_env(self.settings)

    def start_service(self) -> None:
        self.launcher = launch(self.settings, self.logs)
        self.connect()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return cli(self.settings, *args)

    def connect(self, timeout_s: float = 60.0) -> None:
        """(Re)join the service's actor system once its supervisor answers."""

        def joined() -> bool:
            if self.launcher is not None and self.launcher.poll() is not None:
                raise AssertionError(f"the service exited with {self.launcher.returncode}; see {self.logs}/launcher.log")
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.settings.admin_port)) != 0:
                    return False
            actor_system, supervisor = connect(self.settings)
            peers = actor_system.ask(supervisor, GetPeers(), 2)
            if not isinstance(peers, Peers) or peers.ingress is None:
                return False  # (never shutdown() a client: that would stop the service)
            self.actor_system, self.supervisor, self.peers = actor_system, supervisor, peers
            self.session = os.getsid(actor_system.ask(supervisor, Ping(), 5).pid)
            return True

        wait_until(joined, timeout_s, 0.2, "the service to start")

    def stop_service(self) -> None:
        if self.launcher is not None:
            stop(self.launcher)
            self.launcher = None

    def kill_service(self) -> None:
        """SIGKILL to every process of the service, as a power cut would."""
        assert self.launcher is not None
        self.launcher.kill()
        kill_session(self.session)
        self.launcher.wait(10)
        self.launcher = None
        # Until the dead admin's port is closed, joining it as a client could make Thespian
        # start an admin of its own in this process, on the service's port.
        if wait_gone(self.session):
            raise AssertionError(f"processes of session {self.session} survived SIGKILL")
        wait_closed(self.settings.admin_port)

    def close(self) -> None:
        try:
            self.stop_service()
        finally:
            self.stop_simulator()
            self.probe.close()
            self.nats.stop()
            self._kill_strays()

    def _kill_strays(self) -> None:
        """Any process still running with this system's run dir (a daemonised Thespian admin
        left behind by a failed test, say) is killed, so the next test starts clean."""
        marker = f"EXEC_RUN_DIR={self.settings.run_dir}".encode()
        for pid in pids():
            with contextlib.suppress(OSError):
                if marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                    os.kill(pid, SIGKILL)

    # --- driving ------------------------------------------------------------------------------

    def control(self, **switches: Any) -> SimStatus:
        return control(self.probe, self.sim, **switches)

    def send(self, payload: dict[str, Any] | bytes, subject: str | None = None) -> uuid.UUID | None:
        if isinstance(payload, dict):
            subject = subject or f"signals.approved.{payload['symbol']}"
            self.probe.publish(subject, msgspec.json.encode(payload))
            return order_id_for(uuid.UUID(payload["signal_id"]))
        assert subject is not None
        self.probe.publish(subject, payload)
        return None

    # --- looking ------------------------------------------------------------------------------

    def ask(self, role: str, message: Any, timeout_s: float = 10.0) -> Any:
        """Ask a role; if it does not answer (restarted since), ask where it lives now."""
        deadline = time.monotonic() + timeout_s
        while True:
            answer = self.actor_system.ask(getattr(self.peers, role), message, max(0.5, deadline - time.monotonic()))
            if answer is not None or time.monotonic() >= deadline:
                return answer
            peers = self.actor_system.ask(self.supervisor, GetPeers(), 5)
            if isinstance(peers, Peers):
                self.peers = peers

    def tell(self, role: str, message: Any) -> None:
        """Send without an answer; the ping after it makes sure it has left this process."""
        target = getattr(self.peers, role)
        self.actor_system.tell(target, message)
        self.actor_system.ask(target, Ping(), 10)

    def query(self, sql: str, **parameters: Any) -> list[tuple[Any, ...]]:
        result: QueryResult = self.ask("recorder", Query(sql, parameters))
        assert result.error is None, result.error
        return result.rows

    def order_row(self, order_id: uuid.UUID) -> dict[str, Any] | None:
        result: QueryResult = self.ask("recorder", Query("SELECT * FROM suho_analytics.orders WHERE order_id = {id:UUID}", {"id": order_id}))
        return dict(zip(result.columns, result.rows[0], strict=True)) if result.rows else None

    def wait_status(self, order_id: uuid.UUID, *statuses: str, timeout_s: float = 15.0) -> dict[str, Any]:
        return wait_until(
            lambda: (row := self.order_row(order_id)) is not None and row["order_status"] in statuses and row,
            timeout_s,
            0.1,
            f"order {order_id} to reach {statuses}",
        )

    def statuses_on_nats(self, order_id: uuid.UUID) -> list[str]:
        found = []
        for subject, data in self.probe.seen["orders.>"]:
            if msgspec.json.decode(data).get("order_id") == str(order_id):
                found.append(subject.split(".")[1])
        return found

    def dead_letters(self) -> list[dict[str, Any]]:
        return [msgspec.json.decode(data) for _, data in self.probe.seen["signals.deadletter"]]

    def positions(self) -> PositionsSnapshot:
        return self.ask("positions", GetPositions())

    def show(self, key: uuid.UUID) -> Any:
        return self.ask("supervisor", ShowOrder(key))

    def archive(self, idle_s: float = 1.5) -> list[OrderEvent]:
        return read_archive(self.settings, idle_s)


# --- shared by RunningSystem and tests/cluster.py ---------------------------------------------------


def service_env(settings: Settings) -> dict[str, str]:
    """The environment of a service with these settings and of the CLI talking to it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXEC_")}
    return env | {f"EXEC_{name.upper()}": str(value) for name, value in msgspec.structs.asdict(settings).items()}


def launch(settings: Settings, logs: Path) -> subprocess.Popen[bytes]:
    """``execution-service run`` as production runs it, in a session of its own."""
    out = open(logs / "launcher.log", "ab")
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", "run"], env=service_env(settings), stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
        start_new_session=True,
    )  # fmt: skip


def stop(launcher: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the launcher drains and stops), then whatever did not stop with it (a failed
    start, a hung drain) goes too."""
    launcher.send_signal(SIGTERM)
    try:
        launcher.wait(90)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launcher.pid, SIGKILL)


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """``execution-service ARGS`` against the service with these settings, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args], env=service_env(settings), cwd=REPO, capture_output=True, text=True, timeout=60
    )


def start_simulator(settings: Settings, tmp: Path, logs: Path, probe: NatsProbe, sim_env: dict[str, str]) -> subprocess.Popen[bytes]:
    """The simulated connector, as a process of its own, once it answers on NATS."""
    env = {
        **os.environ,
        **settings.nats_environment(),
        "SIM_TICK_MS": "0",
        "SIM_SEED": "7",
        "SIM_STATE_FILE": str(tmp / "sim-state.json"),
        **sim_env,
    }
    log = open(logs / "simulator.log", "ab")
    sim = subprocess.Popen([sys.executable, "-m", "simulator"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)

    def answers() -> bool:
        try:
            probe.request(CONTROL_SUBJECT, encode(SimControl()), 1.0)
            return True
        except Exception:
            return False

    wait_until(answers, 20, 0.1, "the simulator to answer")
    return sim


def control(probe: NatsProbe, sim: subprocess.Popen[bytes] | None, **switches: Any) -> SimStatus:
    """Drive the simulator; retried for a while, since it may be reconnecting to NATS."""
    deadline = time.monotonic() + 15
    while True:
        try:
            return decode(probe.request(CONTROL_SUBJECT, encode(SimControl(**switches)), 2.0), SimStatus)
        except Exception:
            if time.monotonic() > deadline or sim is None or sim.poll() is not None:
                raise
            time.sleep(0.2)


def archive_reader(settings: Settings) -> AIOKafkaConsumer:
    """A consumer of the whole archive topic from its start, in no group (on a running loop)."""
    return AIOKafkaConsumer(
        settings.archive_topic,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )


def read_archive(settings: Settings, idle_s: float = 1.5) -> list[OrderEvent]:
    """Every record in the settings' Kafka archive topic, in partition order."""

    async def read() -> list[OrderEvent]:
        consumer = archive_reader(settings)
        await consumer.start()
        records: list[OrderEvent] = []
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=int(idle_s * 1000))
                if not batch:
                    return records
                for partition_records in batch.values():
                    records += [decode(r.value, OrderEvent) for r in partition_records]
        finally:
            await consumer.stop()

    return asyncio.run(asyncio.wait_for(read(), 60))
