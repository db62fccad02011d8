"""The benchmark: the real service (its own processes), real NATS, Kafka and ClickHouse, and
the simulated connector at zero added latency. Prints a table and writes JSON.

    .venv/bin/python tests/bench.py [--quick] [--json bench-results.json]

Times are taken in this process on one monotonic clock: a signal's publish, the order
request's arrival on ``orders.submitted.*``, the fill's arrival on ``broker.fill.*``, the
``orders.filled.*`` status (published only after the recorder's ClickHouse insert returned,
so it bounds "readable in ClickHouse") and the fill event's arrival from the Kafka archive.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import nats
from aiokafka import AIOKafkaConsumer
from harness import KafkaServer, RunningSystem, signal, wait_until
from prometheus_client.parser import text_string_to_metric_families

from messages.actor import Directory, GetDirectory, Ping, Pong
from messages.order import order_id_for
from messages.symbols import SYMBOLS
from system import session_members

FX = ["EURUSD", "GBPUSD", "USDJPY", "AUDUSD", "USDCHF", "EURJPY"]


def percentiles(samples_ms: Iterable[float]) -> dict[str, float]:
    data = sorted(samples_ms)
    if not data:
        return {"n": 0}
    pick = lambda q: data[min(len(data) - 1, int(q * len(data)))]  # noqa: E731
    return {"n": len(data), "p50": round(statistics.median(data), 3), "p95": round(pick(0.95), 3), "p99": round(pick(0.99), 3), "max": round(data[-1], 3)}


class Watch:
    """Arrival times (perf_counter) of what the service and the broker publish, per order."""

    def __init__(self, system: RunningSystem) -> None:
        self.system = system
        self.loop = system.probe.loop
        self.sent: dict[str, float] = {}
        self.submitted: dict[str, float] = {}
        self.fill: dict[str, float] = {}
        self.filled: dict[str, float] = {}
        self.archived: dict[str, float] = {}
        self._run(self._start())

    def _run(self, coro: Any, timeout_s: float = 600) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    async def _start(self) -> None:
        # A connection of its own, so publishing does not queue behind watching.
        self.nc = await nats.connect(self.system.nats.url)

        def stamp(into: dict[str, float]) -> Any:
            async def on(msg: Any) -> None:
                order_id = msgspec.json.decode(msg.data).get("order_id")
                if order_id:
                    into.setdefault(order_id, time.perf_counter())

            return on

        await self.nc.subscribe("orders.submitted.>", cb=stamp(self.submitted))
        await self.nc.subscribe("broker.fill.>", cb=stamp(self.fill))
        await self.nc.subscribe("orders.filled.>", cb=stamp(self.filled))
        await self.nc.flush()
        self.consumer = AIOKafkaConsumer(
            self.system.settings.archive_topic, bootstrap_servers=self.system.settings.kafka_bootstrap,
            auto_offset_reset="latest", enable_auto_commit=False, group_id=None,
        )  # fmt: skip
        await self.consumer.start()
        asyncio.ensure_future(self._read_archive())

    async def _read_archive(self) -> None:
        async for record in self.consumer:
            event = msgspec.json.decode(record.value)
            if event["kind"] == "fill":
                self.archived.setdefault(event["order_id"], time.perf_counter())

    def publish(self, signals: list[dict[str, Any]], rate: float) -> float:
        """Publish at a steady rate, noting when each went out; returns the seconds it took."""

        def note(payload: dict[str, Any]) -> None:
            self.sent[str(order_id_for(uuid.UUID(payload["signal_id"])))] = time.perf_counter()

        return self._run(publish_steadily(self.system, signals, rate, note))

    def between(self, start: dict[str, float], end: dict[str, float], ids: Iterable[str]) -> list[float]:
        return [(end[i] - start[i]) * 1000 for i in ids if i in start and i in end]


def market_signals(system: RunningSystem, count: int) -> list[dict[str, Any]]:
    quotes = system.control().quotes
    return [signal(s, "buy" if i % 2 else "sell", 0.01, quotes[s].ask if i % 2 else quotes[s].bid) for i, s in ((i, FX[i % len(FX)]) for i in range(count))]


def resting_signals(system: RunningSystem, count: int) -> list[dict[str, Any]]:
    """Buy limits 300 pips under the market: they rest and never trigger (prices do not move)."""
    quotes = system.control().quotes
    out = []
    for i in range(count):
        symbol = FX[i % len(FX)]
        price = round(quotes[symbol].bid - 300 * SYMBOLS[symbol].pip, SYMBOLS[symbol].digits)
        out.append(signal(symbol, "buy", 0.01, price, order_type="limit"))
    return out


def pongs(system: RunningSystem) -> list[Pong]:
    directory: Directory = system.ask("supervisor", GetDirectory())
    addresses = [a for a in (getattr(directory.peers, f) for f in directory.peers.__struct_fields__) if a is not None]
    answers = [system.actor_system.ask(a, Ping(), 10) for a in [*addresses, *directory.order_actors]]
    return [p for p in answers if isinstance(p, Pong)]


def messages_sent(system: RunningSystem) -> Counter[str]:
    total: Counter[str] = Counter()
    for pong in pongs(system):
        total.update({k: v for k, v in pong.sent.items() if k not in ("Pong", "Directory")})
    return total


def service_pids(system: RunningSystem) -> list[int]:
    assert system.launcher is not None
    return [system.launcher.pid, *session_members(system.session)]


def cpu_seconds(pids: list[int]) -> float:
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / 100  # USER_HZ


def pss_mb(pids: list[int]) -> float:
    total_kb = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total_kb += int(line.split()[1])
        except OSError:
            continue
    return round(total_kb / 1024, 1)


def supervisor_counts(system: RunningSystem) -> dict[str, int]:
    pong: Pong = system.ask("supervisor", Ping())
    words = pong.doing.replace(",", "").split()
    return {words[i + 1]: int(words[i]) for i in range(0, len(words) - 1, 2) if words[i].isdigit()}


def settle(watch: Watch, ids: list[str], timeout_s: float = 60) -> None:
    wait_until(lambda: all(i in watch.filled and i in watch.archived for i in ids), timeout_s, 0.1, "every order filled and archived")


def run(quick: bool, output: Path, log_level: str) -> dict[str, Any]:
    results: dict[str, Any] = {"when": datetime.now(UTC).isoformat(), "quick": quick, "log_level": log_level}
    base = Path(tempfile.mkdtemp(prefix="bench-"))
    kafka = KafkaServer(base / "kafka")
    system = RunningSystem(
        base / "service", kafka.bootstrap,
        sim_env={"SIM_TICK_MS": "0", "SIM_BALANCE": "1000000000", "SIM_LOG_LEVEL": "WARNING"},
        reconcile_interval_s=3600, log_level=log_level, order_actor_pool=8,
        max_symbol_exposure=1e9,  # thousands of orders stay open: the limit is not what is measured
    )  # fmt: skip
    try:
        watch = Watch(system)
        # Warm up: every actor and connection has done its first order.
        warm = market_signals(system, 50)
        watch.publish(warm, 100)
        settle(watch, [str(order_id_for(uuid.UUID(s["signal_id"]))) for s in warm])

        print("floor: NATS publish -> subscriber", flush=True)
        results["nats_floor_ms"] = floor(system)

        seconds = 15 if quick else 60
        print(f"signal -> broker at 100/s for {seconds}s", flush=True)
        before_msgs, pids = messages_sent(system), service_pids(system)
        before_cpu = cpu_seconds(pids)
        steady = market_signals(system, 100 * seconds)
        watch.publish(steady, 100)
        ids = [str(order_id_for(uuid.UUID(s["signal_id"]))) for s in steady]
        settle(watch, ids)
        cpu = cpu_seconds(service_pids(system)) - before_cpu
        sent = messages_sent(system) - before_msgs
        results["signal_to_broker_ms"] = percentiles(watch.between(watch.sent, watch.submitted, ids))
        results["fill_to_clickhouse_ms"] = percentiles(watch.between(watch.fill, watch.filled, ids))
        results["fill_to_kafka_ms"] = percentiles(watch.between(watch.fill, watch.archived, ids))
        results["signal_to_filled_ms"] = percentiles(watch.between(watch.sent, watch.filled, ids))
        results["messages_per_order"] = round(sum(sent.values()) / len(ids), 2)
        results["messages_by_type_per_order"] = {k: round(v / len(ids), 3) for k, v in sent.most_common()}
        results["cpu_s_per_1000_orders"] = round(cpu / len(ids) * 1000, 2)

        print("sustained throughput", flush=True)
        results["throughput"] = throughput(system, watch, quick)
        # Before the SIGKILL of the recovery run, whose restart starts the figures afresh.
        results["metrics"] = metrics_sample(system)

        print("capacity and recovery", flush=True)
        results.update(capacity_and_recovery(system, quick))
    except Exception as exc:  # the figures measured so far are still worth printing
        results["error"] = repr(exc)
        print(f"benchmark stopped: {exc!r}", flush=True)
    finally:
        system.close()
        kafka.stop()
    output.write_text(json.dumps(results, indent=2, default=str))
    return results


def metrics_sample(system: RunningSystem) -> dict[str, float]:
    """The service's own figures, from its Prometheus endpoint (histogram buckets left out)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{system.settings.metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    sample = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if not s.name.endswith("_bucket"):
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                sample[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return sample


def floor(system: RunningSystem) -> dict[str, float]:
    async def measure() -> list[float]:
        sub_nc = await nats.connect(system.nats.url)
        pub_nc = await nats.connect(system.nats.url)
        got: list[float] = []

        async def on(msg: Any) -> None:
            got.append((time.perf_counter() - float(msg.data)) * 1000)

        await sub_nc.subscribe("bench.floor", cb=on)
        await sub_nc.flush()
        for _ in range(2000):
            await pub_nc.publish("bench.floor", repr(time.perf_counter()).encode())
            await pub_nc.flush()
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.2)
        await sub_nc.close()
        await pub_nc.close()
        return got

    return percentiles(asyncio.run_coroutine_threadsafe(measure(), system.probe.loop).result(120))


def throughput(system: RunningSystem, watch: Watch, quick: bool) -> dict[str, Any]:
    """Raise the offered rate until completions fall behind or latency grows without bound."""
    steps: list[dict[str, Any]] = []
    seconds = 5 if quick else 10
    best = 0.0
    for rate in (100, 150, 200, 300, 400, 500, 600, 800):
        batch = market_signals(system, rate * seconds)
        ids = [str(order_id_for(uuid.UUID(s["signal_id"]))) for s in batch]
        took = watch.publish(batch, rate)
        start = min(watch.sent[i] for i in ids)
        try:
            settle(watch, ids, timeout_s=30)
            done = True
        except AssertionError:
            done = False
        finished = max((watch.archived.get(i, 0) for i in ids), default=0)
        lag = percentiles(watch.between(watch.sent, watch.filled, ids))
        achieved = len([i for i in ids if i in watch.archived]) / max(finished - start, 1e-9)
        # Sustained: everything through in about the time it took to offer it, latency bounded.
        sustained = done and finished - start < took + 1.0 and lag.get("p99", 1e9) < 1000
        steps.append({"offered_per_s": rate, "achieved_per_s": round(achieved, 1), "signal_to_filled_ms": lag, "sustained": sustained})
        print(f"  {rate}/s offered: {achieved:.0f}/s through all sinks, p99 signal->filled {lag.get('p99')} ms, {'sustained' if sustained else 'falling behind'}", flush=True)
        if not sustained:
            break
        best = rate
    return {"sustained_per_s": best, "steps": steps}


def capacity_and_recovery(system: RunningSystem, quick: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    watch_rate = 500
    probe_publish(system, resting_signals(system, 1000), watch_rate)
    wait_until(lambda: supervisor_counts(system).get("resting", 0) >= 1000, 120, 0.5, "1,000 resting orders")
    out["pss_mb_at_1000_resting"] = pss_mb(service_pids(system))
    out["processes"] = len(service_pids(system))

    killed = time.perf_counter()
    system.kill_service()
    system.start_service()
    wait_until(lambda: (c := supervisor_counts(system)).get("reconciling", 1) == 0 and c.get("resting", 0) >= 1000, 120, 0.1, "recovery")
    out["recovery_s_1000_open"] = round(time.perf_counter() - killed, 2)
    log = (Path(system.settings.run_dir) / "logs" / "service.log").read_text().splitlines()
    lines = [line for line in log if "every open order reconciled" in line]
    out["recovery_after_state_loaded_s"] = float(lines[-1].split("broker ")[1].split("s after")[0]) if lines else None

    target = 3000 if quick else 10000
    more = resting_signals(system, target - 1000)
    probe_publish(system, more, watch_rate)
    wait_until(lambda: supervisor_counts(system).get("resting", 0) >= target, 300, 0.5, f"{target} resting orders")
    out["resting_orders_held"] = supervisor_counts(system).get("resting", 0)
    out[f"pss_mb_at_{target}_resting"] = pss_mb(service_pids(system))
    return out


async def publish_steadily(
    system: RunningSystem, signals: list[dict[str, Any]], rate: float, note: Callable[[dict[str, Any]], None] | None = None
) -> float:
    start = time.perf_counter()
    for i, payload in enumerate(signals):
        if (wait := start + i / rate - time.perf_counter()) > 0:
            await asyncio.sleep(wait)
        if note is not None:
            note(payload)
        await system.probe.js.publish(f"signals.approved.{payload['symbol']}", msgspec.json.encode(payload))
    return time.perf_counter() - start


def probe_publish(system: RunningSystem, signals: list[dict[str, Any]], rate: float) -> None:
    asyncio.run_coroutine_threadsafe(publish_steadily(system, signals, rate), system.probe.loop).result(900)


def table(results: dict[str, Any]) -> str:
    from service.cli import table as render

    def lat(key: str) -> str:
        r = results.get(key, {})
        return f"p50 {r.get('p50')} / p95 {r.get('p95')} / p99 {r.get('p99')} ms (n={r.get('n')})"

    t = results.get("throughput", {})
    target_resting = 3000 if results["quick"] else 10000
    rows = [
        ("NATS floor: publish -> subscriber", lat("nats_floor_ms"), ""),
        ("signal -> broker at 100/s", lat("signal_to_broker_ms"), "p50 <= 2, p99 <= 8 ms"),
        ("fill -> ClickHouse (filled status, after insert)", lat("fill_to_clickhouse_ms"), "p99 <= 250 ms"),
        ("fill -> Kafka archive", lat("fill_to_kafka_ms"), ""),
        ("signal -> filled and recorded", lat("signal_to_filled_ms"), ""),
        ("sustained market orders through all sinks", f"{t.get('sustained_per_s')}/s", ">= 400/s"),
        ("inter-process messages per market order", str(results.get("messages_per_order")), "<= 8"),
        ("CPU seconds per 1,000 orders (all service processes)", str(results.get("cpu_s_per_1000_orders")), ""),
        ("PSS, 1,000 resting orders", f"{results.get('pss_mb_at_1000_resting')} MB ({results.get('processes')} processes)", ""),
        (f"PSS, {target_resting:,} resting orders", f"{results.get(f'pss_mb_at_{target_resting}_resting')} MB", "10,000 within 2 GB"),
        ("recovery of 1,000 open orders (SIGKILL -> reconciled)", f"{results.get('recovery_s_1000_open')} s (after state load {results.get('recovery_after_state_loaded_s')} s)", "<= 10 s"),
    ]
    return render(["measure", "result", "target"], rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter runs, 3,000 resting orders instead of 10,000")
    parser.add_argument("--json", type=Path, default=Path("bench-results.json"))
    parser.add_argument("--log-level", default="INFO", help="the service's log level (INFO logs every order event)")
    args = parser.parse_args()
    outcome = run(args.quick, args.json, args.log_level)
    print()
    print(table(outcome))
    print("\nthe service's metrics after the market-order runs:")
    for name, figure in outcome.get("metrics", {}).items():
        print(f"  {name} {figure:g}")
    print(f"\nJSON: {args.json}")
