"""Fault injection: a load of mixed signals through the real system while processes are
killed and servers stopped at points chosen by a seed, then the eight invariants.

Used by tests/test_fault_injection.py (CI) and, for a longer soak, from the command line:
    .venv/bin/python tests/chaos.py --soak [--seed N] [--signals 2000] [--scenario NAME]
    .venv/bin/python tests/chaos.py --scenario instances_killed   (three instances sharing the work)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from signal import SIGKILL
from typing import Any, Protocol

import msgspec
from cluster import Cluster
from harness import KafkaServer, NatsProbe, RunningSystem, signal, wait_until

from messages import broker as wire
from messages.actor import CancelOrder, Directory, GetDirectory, Ping, Pong, StoreOutage
from messages.codec import decode, encode
from messages.order import OrderEvent, order_id_for
from messages.symbols import SYMBOLS
from simulator.control import SimStatus
from system import wait_gone

SYMBOL_CHOICES = ["EURUSD", "GBPUSD", "USDJPY", "AUDUSD", "XAUUSD"]
TERMINAL = {"filled", "cancelled", "rejected", "failed"}
BROKER_TO_STATUS = {
    "filled": "filled",
    "placed": "submitted",
    "partially_filled": "partially_filled",
    "cancelled": "cancelled",
    "expired": "cancelled",
    "rejected": "rejected",
}
ROLES = ["gateway", "recorder", "archiver", "status_publisher", "positions", "ingress"]


@dataclass
class Load:
    """The signals of one scenario, made from a seed."""

    approved: list[dict[str, Any]] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)
    # Payloads that cannot be read at all, and signal_ids replayed with other content: each
    # must end as a dead letter and give no order.
    poison: list[bytes] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)

    def order_ids(self) -> list[uuid.UUID]:
        return [order_id_for(uuid.UUID(s["signal_id"])) for s in self.approved]


def make_signal(rng: random.Random, quotes: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
    """One signal: (approved?, payload). All order types, partial fills, SL/TP, refusals."""
    symbol = rng.choice(SYMBOL_CHOICES)
    spec = SYMBOLS[symbol]
    pip = spec.pip
    quote = quotes[symbol]
    side = rng.choice(["buy", "sell"])
    volume = round(rng.choice([0.01, 0.05, 0.1]) if symbol == "XAUUSD" else rng.choice([0.1, 0.2, 0.5, 1.0, 6.0]), 2)
    touch = quote.ask if side == "buy" else quote.bid
    away = rng.randint(1, 6) * pip * (1 if side == "buy" else -1)  # in the adverse direction for a stop
    kind = rng.choices(
        ["market", "market_sltp", "limit", "stop", "stop_limit", "not_approved", "hold", "unsafe"], [50, 12, 15, 10, 6, 4, 3, 3]
    )[0]
    r = lambda price: round(price, spec.digits)  # noqa: E731
    if kind == "market":
        return True, signal(symbol, side, volume, r(touch))
    if kind == "market_sltp":
        # Beyond what the price moves while the batch is taken (its stops would then be refused,
        # rightly, as already through the market), close enough to be hit later.
        gap = max(12 * pip, 40 * spec.volatility_points * spec.point)
        sl, tp = (touch - gap, touch + gap) if side == "buy" else (touch + gap, touch - gap)
        return True, signal(symbol, side, volume, r(touch), stop_loss=r(sl), take_profit=r(tp))
    if kind == "limit":
        return True, signal(symbol, side, volume, r(touch - away), order_type="limit")
    if kind == "stop":
        return True, signal(symbol, side, volume, r(touch + away), order_type="stop")
    if kind == "stop_limit":
        stop = touch + away
        return True, signal(symbol, side, volume, r(stop), order_type="stop_limit", stop_price=r(stop), limit_price=r(stop - away / 2))
    if kind == "unsafe":  # a stop-loss on the wrong side, or a fat finger
        wrong = {"stop_loss": r(touch + 12 * pip * (1 if side == "buy" else -1))} if rng.random() < 0.5 else {"entry_price": r(touch * 10)}
        return False, {**signal(symbol, side, volume, r(touch)), **wrong}
    if kind == "not_approved":
        return False, signal(symbol, side, volume, r(touch), risk_approval_status=rng.choice(["pending", "rejected"]))
    return False, signal(symbol, "hold", volume, r(touch))


def send_batch(system: Observed, rng: random.Random, load: Load, count: int) -> None:
    """``count`` signals at the current quotes, then the market moves: pending orders trigger, SL/TP hit."""
    quotes = system.control().quotes
    for _ in range(count):
        approved, payload = make_signal(rng, quotes)
        (load.approved if approved else load.refused).append(payload)
        system.send(payload)
    system.control(step=rng.randint(5, 25))
    time.sleep(0.2)


# --- faults ------------------------------------------------------------------------------------

Fault = Callable[[RunningSystem, random.Random, Load], str]


def pids_of(system: RunningSystem) -> dict[str, list[tuple[int, str]]]:
    """role -> [(pid, doing)] of the running service."""
    directory: Directory = system.ask("supervisor", GetDirectory())
    found: dict[str, list[tuple[int, str]]] = {}
    targets = [directory.peers.supervisor, *(getattr(directory.peers, r) for r in ROLES), *directory.order_actors]
    for address in targets:
        pong = system.actor_system.ask(address, Ping(), 5)
        if isinstance(pong, Pong):
            found.setdefault(pong.role, []).append((pong.pid, pong.doing))
    return found


def kill(pid: int) -> None:
    os.kill(pid, SIGKILL)


ROLE_CLASSES = {
    "gateway": "BrokerGateway",
    "recorder": "Recorder",
    "archiver": "Archiver",
    "status_publisher": "StatusPublisher",
    "positions": "PositionKeeper",
    "ingress": "Ingress",
}


def kill_role(role: str) -> Fault:
    def fault(system: RunningSystem, rng: random.Random, load: Load) -> str:
        ((pid, _),) = pids_of(system)[ROLE_CLASSES[role]]
        kill(pid)
        return f"SIGKILL {role} (pid {pid})"

    return fault


def rejoin(system: RunningSystem) -> None:
    """If the supervisor we know is gone (the launcher restarted the whole tree: on an
    overloaded machine a supervisor may miss its pings), join the tree that replaced it."""
    if not isinstance(system.actor_system.ask(system.supervisor, Ping(), 2), Pong):
        try:
            system.connect(timeout_s=30)
        except Exception as exc:  # still coming back: the next check tries again
            print(f"[chaos] rejoining the service: {exc!r}", flush=True)


def role_pid(system: RunningSystem, role: str) -> int:
    """The pid of one role, asked of that role alone (quicker than pids_of)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        directory = system.ask("supervisor", GetDirectory(), 5)  # a busy supervisor may take a while
        if isinstance(directory, Directory) and getattr(directory.peers, role) is not None:
            pong = system.actor_system.ask(getattr(directory.peers, role), Ping(), 5)
            if isinstance(pong, Pong):
                return pong.pid
        rejoin(system)
        time.sleep(0.2)
    raise AssertionError(f"{role} did not answer")


def kill_writers(rounds: int = 3, signals: int = 300, rate: float = 300.0) -> Fault:
    """SIGKILL the recorder, the archiver and the status publisher, round after round, while a
    burst of market signals arrives (``rate`` a second, published concurrently in chunks):
    Records, Publishes and confirmations are caught in transit."""

    def fault(system: RunningSystem, rng: random.Random, load: Load) -> str:
        quotes = system.control().quotes
        burst = []
        for _ in range(signals):
            symbol = rng.choice(SYMBOL_CHOICES[:4])
            side = rng.choice(["buy", "sell"])
            burst.append(signal(symbol, side, 0.1, quotes[symbol].ask if side == "buy" else quotes[symbol].bid))
        load.approved += burst
        chunk = 30

        def publish() -> None:
            for start in range(0, len(burst), chunk):
                begun = time.monotonic()
                for subject in sorted({f"signals.approved.{s['symbol']}" for s in burst[start : start + chunk]}):
                    payloads = [msgspec.json.encode(s) for s in burst[start : start + chunk] if f"signals.approved.{s['symbol']}" == subject]
                    system.probe.publish_concurrently(subject, payloads)
                time.sleep(max(0.0, chunk / rate - (time.monotonic() - begun)))

        publisher = threading.Thread(target=publish, daemon=True)
        publisher.start()
        killed = []
        time.sleep(0.3)
        for _ in range(rounds):
            for role in ("recorder", "archiver", "status_publisher"):
                try:
                    pid = role_pid(system, role)
                except AssertionError:  # still being replaced
                    time.sleep(0.2)
                    continue
                kill(pid)
                killed.append(role)
                time.sleep(rng.uniform(0.1, 0.4))
        publisher.join(60)
        return f"{signals} signals at ~{rate:.0f}/s; SIGKILL {', '.join(killed)}"

    return fault


def kill_order_actors(system: RunningSystem, rng: random.Random, load: Load) -> str:
    """Kill OrderActors while they hold orders: the broker is slowed down so that orders are
    in flight, and a few more signals arrive to be caught mid-way."""
    system.control(latency_ms=700.0)  # busy long enough to be seen, under broker_timeout_s
    busy: list[tuple[int, str]] = []
    # A round of Pings may take longer than an order is in flight on a loaded machine: if no
    # actor was seen holding one, more signals come.
    for _ in range(5):
        quotes = system.control().quotes
        for _ in range(6):
            symbol = rng.choice(SYMBOL_CHOICES[:4])
            load.approved.append(signal(symbol, "buy", 0.1, quotes[symbol].ask))
            system.send(load.approved[-1])
        try:
            busy = wait_until(
                lambda: [(pid, doing) for pid, doing in pids_of(system).get("OrderActor", []) if doing != "idle"], 5, 0.05, "busy actors"
            )
            break
        except AssertionError:
            continue
    if not busy:
        raise AssertionError("no OrderActor was seen holding an order: nothing to kill")
    chosen = rng.sample(busy, min(2, len(busy)))
    for pid, _ in chosen:
        kill(pid)
    system.control(latency_ms=0.0)
    return f"SIGKILL {len(chosen)} OrderActor(s) holding orders {', '.join(doing.split()[1][:8] for _, doing in chosen)}"


def kill_supervisor(system: RunningSystem, rng: random.Random, load: Load) -> str:
    ((pid, _),) = pids_of(system)["Supervisor"]
    kill(pid)
    # The launcher notices, kills what is left of the tree and starts again. Join only the new
    # tree: a client that reaches for the admin port while the old admin dies would start an
    # admin of its own there (Thespian does that when none answers) and keep the new one out.
    wait_gone(system.session, 60)
    system.connect(timeout_s=90)
    return f"SIGKILL supervisor (pid {pid}); the launcher restarted the service"


def kill_whole_tree(system: RunningSystem, rng: random.Random, load: Load) -> str:
    system.kill_service()
    system.start_service()
    return "SIGKILL the whole process tree, then start again"


def poison_burst(system: RunningSystem, rng: random.Random, load: Load) -> str:
    """Input no neighbour should send, in the middle of the load: unreadable payloads, a
    signal on the bare subject, and earlier signals replayed with other content."""
    levels = rng.randint(2_000, 20_000)
    junk = [
        b"[" * levels + b"]" * levels,
        msgspec.json.encode({**signal(), "pad": "x" * rng.randint(70_000, 900_000)}),
        msgspec.json.encode(signal()).replace(b'"test"', b'"te\xff\xfest"'),  # invalid UTF-8
        msgspec.json.encode(signal()).replace(b'"entry_price":', b'"entry_price":1e999,"x":'),
        rng.randbytes(rng.randint(1, 400)),
    ]
    for payload in junk:
        system.send(payload, "signals.approved.EURUSD")
    bare = msgspec.json.encode(signal())
    system.send(bare, "signals.approved")
    load.poison += [*junk, bare]
    replayed = rng.sample(load.approved, min(3, len(load.approved)))
    for original in replayed:
        system.send({**original, "position_size_recommended": original["position_size_recommended"] * 2})
        load.conflicts.append(original["signal_id"])
    return f"poison: {len(junk) + 1} unreadable or misaddressed messages, {len(replayed)} conflicting replays"


def restart_nats(system: RunningSystem, rng: random.Random, load: Load) -> str:
    system.nats.restart()
    return "NATS stopped and started again"


def clickhouse_outage(system: RunningSystem, rng: random.Random, load: Load) -> str:
    seconds = 8.0
    system.tell("recorder", StoreOutage(seconds))
    return f"ClickHouse writes failing for {seconds:.0f}s"


def connector_misbehaves(system: RunningSystem, rng: random.Random, load: Load) -> str:
    system.control(drop_rate=0.2, duplicate_rate=0.2, reorder_rate=0.2, latency_ms=1.0, jitter_ms=4.0)
    return "connector: 20% of broker messages dropped, 20% duplicated, 20% reordered, latency 1-5 ms"


def connector_silent(system: RunningSystem, rng: random.Random, load: Load) -> str:
    system.control(silent_for_s=3.0)
    return "connector silent for 3s"


class KafkaOutage:
    """The scenario's own Kafka broker, stopped for a while and started again."""

    def __init__(self, run_dir: Path, outage_s: float) -> None:
        self.outage_s = outage_s
        self.server = KafkaServer(run_dir)
        self.bootstrap = self.server.bootstrap

    def __call__(self, system: RunningSystem, rng: random.Random, load: Load) -> str:
        self.server.stop()
        time.sleep(self.outage_s)
        self.server.start()
        return f"Kafka stopped for {self.outage_s:.0f}s and started again"

    def stop(self) -> None:
        self.server.stop()


# --- the invariants -----------------------------------------------------------------------------


class Observed(Protocol):
    """What the load and the invariants need of a system: one instance or several."""

    probe: NatsProbe

    def query(self, sql: str, **parameters: Any) -> list[tuple[Any, ...]]: ...

    def archive(self, idle_s: float = 1.5) -> list[OrderEvent]: ...

    def control(self, **switches: Any) -> SimStatus: ...

    def send(self, payload: dict[str, Any]) -> uuid.UUID | None: ...


def read_stream(system: Observed, subject: str) -> list[tuple[str, dict[str, Any]]]:
    """Every message JetStream holds on ``subject`` (what NATS carried, outages included)."""

    async def read() -> list[tuple[str, dict[str, Any]]]:
        sub = await system.probe.js.subscribe(subject, ordered_consumer=True)
        found = []
        while True:
            try:
                msg = await sub.next_msg(timeout=1.0)
            except Exception:
                break
            found.append((msg.subject, msgspec.json.decode(msg.data)))
        await sub.unsubscribe()
        return found

    return system.probe._run(read(), 120)


def broker_request(system: Observed, subject: str, payload: msgspec.Struct, kind: type[Any]) -> Any:
    return decode(system.probe.request(subject, encode(payload), 10), kind)


def check_invariants(system: Observed, load: Load, started: datetime) -> dict[str, str]:
    """Each invariant -> 'ok' or what is wrong."""
    results: dict[str, str] = {}
    order_ids = load.order_ids()
    refused_ids = [order_id_for(uuid.UUID(s["signal_id"])) for s in load.refused]
    orders = {
        row[0]: row
        for row in system.query(
            "SELECT order_id, order_status, filled_quantity, signal_id FROM suho_analytics.orders"
        )
    }
    reports = {r.order_id: r for r in broker_request(system, wire.ORDER_STATUS_SUBJECT, wire.OrderStatusQuery(order_ids=order_ids + refused_ids), wire.OrderStatusReport).orders}
    requests = Counter(msg["order_id"] for _, msg in read_stream(system, "orders.submitted.>"))
    letters = [msg for _, msg in read_stream(system, "signals.deadletter")]
    # An approved signal that waited (a takeover) while the market went through its stop-loss or
    # take-profit is refused, rightly: it must then have no order anywhere and a dead letter.
    overtaken = {order_id_for(uuid.UUID(letter["signal_id"])) for letter in letters if letter["reason"] == "invalid_stops"}

    # 1. one order per approved signal, at the broker too; none for the others
    def no_order_anywhere(oid: uuid.UUID) -> bool:
        return oid not in orders and not requests[str(oid)] and reports[oid].state is wire.BrokerOrderState.UNKNOWN

    stale = [oid for oid in order_ids if oid in overtaken and no_order_anywhere(oid)]
    problems = [f"{oid}: {'no order' if oid not in orders else ''} {requests[str(oid)]} requests, broker {reports[oid].state.value}"
                for oid in order_ids if oid not in stale and (oid not in orders or requests[str(oid)] != 1 or reports[oid].state is wire.BrokerOrderState.UNKNOWN)]
    problems += [f"{oid}: order for a refused signal" for oid in refused_ids if not no_order_anywhere(oid)]
    results["1 one order per approved signal"] = _verdict(problems, f"{len(stale)} refused as the market had gone through their stops" if stale else "")

    # 2. each broker deal exactly once in executions
    deals = broker_request(system, wire.DEALS_SUBJECT, wire.DealsQuery(since=started - timedelta(hours=1)), wire.DealsReport).deals
    # Raw rows in the service's table (a retried batch rewrites a deal); one row per deal in the view.
    raw_rows, unique_rows = system.query("SELECT count(), uniqExact(execution_id) FROM suho_analytics.execution_records")[0]
    recorded = Counter(row[0] for row in system.query("SELECT deal FROM suho_analytics.executions"))
    broker_deals = {d.deal for d in deals}
    problems = [f"deal {d} missing" for d in broker_deals - set(recorded)]
    problems += [f"deal {d} not at the broker" for d in set(recorded) - broker_deals]
    problems += [f"deal {d} x{n}" for d, n in recorded.items() if n != 1]
    # The raw rows, not the view: a rewrite of a deal must be a copy, never a second version of it.
    conflicting = system.query(
        "SELECT deal, count() FROM suho_analytics.execution_records GROUP BY deal "
        "HAVING uniqExact(execution_id, order_id, fill_price, fill_quantity, position_ticket) > 1"
    )
    problems += [f"deal {d}: {n} raw rows that differ" for d, n in conflicting]
    results["2 each deal exactly once"] = _verdict(problems, f"{len(broker_deals)} deals ({raw_rows - unique_rows} rewrites collapsed)")

    # 3. each order's final state equals the broker's
    problems = []
    for oid in order_ids:
        if oid not in orders:
            continue
        _, status, filled, _ = orders[oid]
        report = reports[oid]
        expected = BROKER_TO_STATUS.get(report.state.value)
        if status != expected or abs(filled - report.filled_volume) > 1e-6:
            problems.append(f"{oid}: ours {status} {filled}, broker {report.state.value} {report.filled_volume}")
    results["3 final state = broker's"] = _verdict(problems)

    # 4. positions = sum of fills = the broker's positions
    ours = {row[0]: row[1] for row in system.query("SELECT ticket, quantity FROM suho_analytics.positions WHERE position_status = 'open'")}
    fills = {row[0]: row[1] for row in system.query(
        "SELECT position_ticket, round(sumIf(fill_quantity, entry = 'in') - sumIf(fill_quantity, entry = 'out'), 8) AS q "
        "FROM suho_analytics.executions GROUP BY position_ticket HAVING q > 1e-9")}
    theirs = {p.ticket: p.volume for p in broker_request(system, wire.POSITIONS_SUBJECT, wire.PositionsQuery(), wire.PositionsReport).positions}
    problems = [f"ticket {t}: positions {ours.get(t)}, fills {fills.get(t)}, broker {theirs.get(t)}"
                for t in set(ours) | set(fills) | set(theirs)
                if not (_same(ours.get(t), fills.get(t)) and _same(ours.get(t), theirs.get(t)))]
    results["4 positions = fills = broker"] = _verdict(problems, f"{len(theirs)} open")

    # 5. the archive holds every lifecycle event (duplicates recognised by event_id)
    events = {row[0] for row in system.query("SELECT event_id FROM suho_analytics.order_events FINAL")}
    archived = Counter(e.event_id for e in system.archive())
    problems = [f"event {e} not archived" for e in events - set(archived)]
    duplicates = sum(n - 1 for n in archived.values())
    results["5 archive complete"] = _verdict(problems, f"{len(events)} events, {duplicates} duplicates counted once")

    # 6. NATS carried a terminal status for every order that reached one
    carried = {(subject.split(".")[1], msg["order_id"]) for subject, msg in read_stream(system, "orders.>")}
    problems = [f"{oid}: no orders.{row[1]}" for oid, row in orders.items() if row[1] in TERMINAL and (row[1], str(oid)) not in carried]
    results["6 terminal status on NATS"] = _verdict(problems)

    # 7. whatever was refused became a dead letter (refused signals, poison, conflicting replays)
    by_signal = {letter["signal_id"] for letter in letters}
    by_hash = {letter["payload_sha256"] for letter in letters}
    conflicts = {letter["signal_id"] for letter in letters if letter["reason"] == "duplicate_conflict"}
    problems = [f"refused signal {s['signal_id']}: no dead letter" for s in load.refused if s["signal_id"] not in by_signal]
    problems += [f"poison {hashlib.sha256(p).hexdigest()[:12]}: no dead letter" for p in load.poison if hashlib.sha256(p).hexdigest() not in by_hash]
    problems += [f"conflicting replay of {s}: no dead letter" for s in load.conflicts if s not in conflicts]
    results["7 refused input dead-lettered"] = _verdict(problems, f"{len(letters)} dead letters")

    # 8. nothing lost in transit: every order's events contiguous from seq 1 in order_events
    # (raw rows, not FINAL) and in the archive (duplicates allowed, no gaps), and its last
    # event is the order's final row (seq = orders.version, same status)
    final = {row[0]: (int(row[1]), str(row[2])) for row in system.query("SELECT order_id, version, order_status FROM suho_analytics.orders")}
    stored: dict[Any, tuple[set[int], str]] = {
        row[0]: ({int(s) for s in row[1]}, str(row[2]))
        for row in system.query(
            "SELECT order_id, groupUniqArray(seq), argMax(order_status, seq) FROM suho_analytics.order_events GROUP BY order_id"
        )
    }
    archived_seqs: dict[Any, set[int]] = {}
    archived_last: dict[Any, tuple[int, str]] = {}
    for event in system.archive():
        archived_seqs.setdefault(event.order_id, set()).add(event.seq)
        if event.seq >= archived_last.get(event.order_id, (0, ""))[0]:
            archived_last[event.order_id] = (event.seq, event.status.value)
    problems = []
    for oid in set(final) | set(stored) | set(archived_seqs):
        version, status = final.get(oid, (0, "none"))
        seqs, stored_status = stored.get(oid, (set(), "none"))
        if seqs != set(range(1, max(seqs, default=0) + 1)) or max(seqs, default=0) != version or stored_status != status:
            gaps = sorted(set(range(1, max(seqs, default=0) + 1)) - seqs)
            problems.append(f"{oid}: order_events seqs up to {max(seqs, default=0)} (missing {gaps}) {stored_status}, order v{version} {status}")
        seqs = archived_seqs.get(oid, set())
        last_seq, last_status = archived_last.get(oid, (0, "none"))
        if seqs != set(range(1, last_seq + 1)) or last_seq != version or last_status != status:
            gaps = sorted(set(range(1, last_seq + 1)) - seqs)
            problems.append(f"{oid}: archive seqs up to {last_seq} (missing {gaps}) {last_status}, order v{version} {status}")
    results["8 nothing lost in transit"] = _verdict(problems, f"{len(final)} orders' events contiguous, last = final row")
    return results


def _same(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and abs(a - b) < 1e-6


def _verdict(problems: list[str], detail: str = "") -> str:
    if not problems:
        return f"ok{f' ({detail})' if detail else ''}"
    return f"FAILED: {len(problems)}: " + "; ".join(problems[:5])


# --- a scenario ---------------------------------------------------------------------------------


@dataclass
class Outcome:
    scenario: str
    seed: int
    faults: list[str]
    orders: int
    fills: int
    invariants: dict[str, str]
    recovery_s: float

    @property
    def passed(self) -> bool:
        return all(v.startswith("ok") for v in self.invariants.values())


def run_scenario(
    name: str,
    tmp: Path,
    kafka_bootstrap: str,
    seed: int,
    faults: list[Fault],
    signals: int = 150,
    settle_timeout_s: float = 120.0,
    kafka_outage: KafkaOutage | None = None,
) -> Outcome:
    rng = random.Random(f"{seed}:{name}")
    print(f"\n[chaos] scenario {name}: seed {seed} (replay: --seed {seed} --scenario {name})", flush=True)
    system = RunningSystem(
        tmp,
        kafka_outage.bootstrap if kafka_outage else kafka_bootstrap,
        sim_env={"SIM_SEED": str(seed), "SIM_BALANCE": "100000000", "SIM_TICK_MS": "0"},
        broker_timeout_s=1.0,
        reconcile_interval_s=2.0,
        order_actor_pool=4,
        max_symbol_exposure=1e6,  # the load keeps what it opens: the limit is not under test
        # Shorter than the outage: a send still waiting when Kafka comes back without a leader yet
        # expires in the producer, which leaves an idempotent producer out of step with the broker
        # (a fresh one must take over). It happened in CI with the default 40 s; this makes it likelier.
        **({"kafka_request_timeout_s": kafka_outage.outage_s / 3} if kafka_outage else {}),
    )
    started = datetime.now(UTC)
    load = Load()
    injected: list[str] = []
    try:
        batches = 10
        per_batch = max(1, signals // batches)
        fault_at = sorted(rng.sample(range(1, batches), min(len(faults), batches - 1))) if faults else []
        schedule = dict(zip(fault_at, faults, strict=False))
        last_fault = time.monotonic()
        for batch in range(batches):
            if batch in schedule:
                injected.append(schedule[batch](system, rng, load))
                last_fault = time.monotonic()
            send_batch(system, rng, load, per_batch)
        for fault in faults[len(fault_at):]:  # more faults than gaps: the rest go at the end
            injected.append(fault(system, rng, load))
            last_fault = time.monotonic()
        # Some resting orders are cancelled by an operator; then the connector behaves again.
        for oid in rng.sample(load.order_ids(), min(5, len(load.order_ids()))):
            system.tell("supervisor", CancelOrder(oid, "operator"))
        system.control(drop_rate=0.0, duplicate_rate=0.0, reorder_rate=0.0, latency_ms=0.0, jitter_ms=0.0, silent_for_s=0.0)
        results: dict[str, str] = {}

        def converged() -> bool:
            nonlocal results
            try:
                results = check_invariants(system, load, started)
            except Exception as exc:  # a server still coming back
                where = next((f"{f.name}:{f.lineno}" for f in reversed(traceback.extract_tb(exc.__traceback__)) if f.filename.endswith(("chaos.py", "harness.py"))), "?")
                results = {"checking": f"FAILED: {exc!r} in {where}"}
                rejoin(system)
            return all(v.startswith("ok") for v in results.values())

        try:
            wait_until(converged, settle_timeout_s, 2.0, "the invariants")
        except AssertionError:
            pass
        recovery = time.monotonic() - last_fault
        fills = int(system.query("SELECT count() FROM suho_analytics.executions")[0][0])
        return Outcome(name, seed, injected, len(load.approved), fills, results, recovery)
    finally:
        system.close()


# --- several instances ----------------------------------------------------------------------------

INSTANCES = 3
PARTITIONS = 3  # with these, SYMBOL_CHOICES fall into every partition
TAKEOVER_TIMEOUT_S = 120.0


class SteadyLoad(threading.Thread):
    """Signals at a steady pace, from a thread, while the main thread kills and restarts."""

    def __init__(self, system: Observed, rng: random.Random, load: Load, per_batch: int = 1) -> None:
        super().__init__(daemon=True)
        self.system, self.rng, self.load, self.per_batch = system, rng, load, per_batch
        self.stopping = threading.Event()
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                send_batch(self.system, self.rng, self.load, self.per_batch)
        except BaseException as exc:  # reported by stop()
            self.failure = exc

    def stop(self) -> None:
        self.stopping.set()
        self.join(30)
        if self.failure is not None:
            raise self.failure


def kill_busiest(cluster: Cluster) -> tuple[str, float]:
    """SIGKILL the running instance serving the most partitions; what was done, how long from
    the kill until another held each of its leases, and until every partition was served again
    with every order it rebuilt reconciled (that time is returned)."""
    serving = cluster.serving()
    victim = max(cluster.running(), key=lambda i: (sum(1 for name, _ in serving.values() if name == i.name), i.name))
    partitions = sorted(p for p, (name, _) in serving.items() if name == victim.name)
    killed_at = victim.kill()
    try:
        wait_until(lambda: set(partitions) <= cluster.held().keys(), TAKEOVER_TIMEOUT_S, 0.2, f"the leases of {victim.name} to be taken")
        leased = time.monotonic() - killed_at
        now = wait_until(cluster.all_served_and_reconciled, TAKEOVER_TIMEOUT_S, 0.2, f"the partitions of {victim.name} to be taken over")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; serving now: {cluster.serving()}") from None
    took = time.monotonic() - killed_at
    moved = ", ".join(f"{p}->{now[p]}" for p in partitions)
    return f"SIGKILL {victim.name} (partitions {moved}): leases taken {leased:.1f}s, all reconciled {took:.1f}s after", took


def run_instances_scenario(tmp: Path, kafka_bootstrap: str, seed: int, phase_s: float = 6.0, settle_timeout_s: float = 120.0) -> Outcome:
    """Three instances share three partitions under a steady load: one is SIGKILLed, then a
    second (the last serves everything), then both come back and the work is shared again."""
    name = "instances_killed"
    rng = random.Random(f"{seed}:{name}")
    print(f"\n[chaos] scenario {name}: seed {seed}", flush=True)
    cluster = Cluster(
        tmp, kafka_bootstrap, INSTANCES, PARTITIONS,
        sim_env={"SIM_SEED": str(seed), "SIM_BALANCE": "100000000", "SIM_TICK_MS": "0"},
        broker_timeout_s=1.0, reconcile_interval_s=2.0, order_actor_pool=2, max_symbol_exposure=1e6,
        log_level="WARNING",  # nine trees on two cores: a log line per order event is a load of its own
    )  # fmt: skip
    started = datetime.now(UTC)
    load = Load()
    injected: list[str] = []
    try:
        wait_until(cluster.all_served_and_reconciled, TAKEOVER_TIMEOUT_S, 0.5, "every partition to be served")
        steady = SteadyLoad(cluster, rng, load)
        steady.start()
        time.sleep(phase_s)
        first, first_s = kill_busiest(cluster)
        time.sleep(phase_s)
        second, second_s = kill_busiest(cluster)
        injected += [first, second]
        time.sleep(phase_s)
        back_at = time.monotonic()
        dead = [instance for instance in cluster.instances if instance.launcher is None]
        for instance in dead:
            instance.start()
        for instance in dead:
            wait_until(instance.joined, TAKEOVER_TIMEOUT_S, 0.2, f"instance {instance.name} to join again")

        def shared_again() -> bool:
            owners = [name for name, _ in cluster.serving().values()]
            return sorted(owners) == sorted(i.name for i in cluster.instances)

        try:
            wait_until(shared_again, TAKEOVER_TIMEOUT_S, 0.5, "the work to be shared by all instances again")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; serving now: {cluster.serving()}") from None
        injected.append(f"{' and '.join(i.name for i in dead)} restarted: one partition each again {time.monotonic() - back_at:.1f}s later")
        time.sleep(phase_s / 2)
        steady.stop()
        results: dict[str, str] = {}

        def converged() -> bool:
            nonlocal results
            try:
                results = check_invariants(cluster, load, started)
            except Exception as exc:
                results = {"checking": f"FAILED: {exc!r}"}
            return all(v.startswith("ok") for v in results.values())

        with contextlib.suppress(AssertionError):
            wait_until(converged, settle_timeout_s, 2.0, "the invariants")
        fills = int(cluster.query("SELECT count() FROM suho_analytics.executions")[0][0])
        return Outcome(name, seed, injected, len(load.approved), fills, results, max(first_s, second_s))
    finally:
        cluster.close()


# What the pytest run collected, for its closing summary (conftest.py prints it).
OUTCOMES: list[Outcome] = []


def summary(outcomes: list[Outcome]) -> str:
    from service.cli import table

    rows = []
    for o in outcomes:
        failed = [k for k, v in o.invariants.items() if not v.startswith("ok")]
        rows.append((o.scenario, o.seed, "; ".join(o.faults) or "none", o.orders, o.fills,
                     f"all {len(o.invariants)} ok" if o.passed else "FAILED " + ", ".join(failed), f"{o.recovery_s:.1f}s"))  # fmt: skip
    return table(["scenario", "seed", "faults injected", "orders", "fills", "invariants", "fault to reconciled"], rows)


def scenarios() -> dict[str, list[Fault]]:
    return {
        "order_actors": [kill_order_actors, kill_order_actors],
        "each_role": [kill_role(role) for role in ROLES],
        "supervisor": [kill_supervisor],
        "whole_tree": [kill_whole_tree],
        "nats_restart": [restart_nats],
        "clickhouse_outage": [clickhouse_outage],
        "connector_faults": [connector_misbehaves, connector_silent],
        "poison_input": [poison_burst, kill_role("ingress"), poison_burst],
        "writers_killed": [kill_writers()],
    }


if __name__ == "__main__":
    import argparse
    import sys
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=random.SystemRandom().randrange(1 << 30))
    parser.add_argument("--signals", type=int, default=150)
    parser.add_argument("--scenario", action="append", help="run only these (repeatable)")
    parser.add_argument("--soak", action="store_true", help="more signals and every fault twice")
    parser.add_argument("--kafka", default="", help="bootstrap of a running Kafka (default: start one)")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="chaos-"))
    kafka = None if args.kafka else KafkaOutage(base / "kafka", outage_s=30)
    bootstrap = args.kafka or kafka.bootstrap  # type: ignore[union-attr]
    chosen = scenarios()
    if kafka is not None:
        chosen["kafka_outage"] = [kafka]
    outcomes = []
    try:
        for name, faults in chosen.items():
            if args.scenario and name not in args.scenario:
                continue
            count = args.signals * (5 if args.soak else 1)
            outcomes.append(run_scenario(name, base / name, bootstrap, args.seed, faults * (2 if args.soak else 1), count,
                                         kafka_outage=kafka if name == "kafka_outage" else None))  # fmt: skip
        if not args.scenario or "instances_killed" in args.scenario:
            outcomes.append(run_instances_scenario(base / "instances_killed", bootstrap, args.seed))
    finally:
        if kafka is not None:
            kafka.stop()
    print(summary(outcomes))
    for o in outcomes:
        for k, v in o.invariants.items():
            if not v.startswith("ok"):
                print(f"{o.scenario}: {k}: {v}")
    sys.exit(0 if all(o.passed for o in outcomes) else 1)
