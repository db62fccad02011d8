"""Paper trading in one command: the simulated connector, the service, a handful of signals,
and what became of them (states, fills, slippage, positions, refusals).

The demo keeps its state in run_dir/demo, wiped at every start unless asked to keep it, so
its report shows this run's orders and positions only.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import nats

from messages.actor import GetPositions, PositionsSnapshot, Query, QueryResult
from messages.codec import decode, encode
from messages.order import order_id_for
from service import report as quality
from service.cli import REPORT_SINCE, positions_table, table
from service.config import Settings
from service.processes import die_with_parent
from simulator.control import CONTROL_SUBJECT, SimControl, SimStatus
from system import Service, StopSignals, claim

SETTLE_S = 4.0


def demo_signals(quotes: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(what it shows, signal) pairs priced off the simulator's current quotes."""

    def signal(symbol: str, signal_type: str, volume: float, entry: float, **fields: Any) -> dict[str, Any]:
        now = datetime.now(UTC).isoformat()
        return {
            "signal_id": str(uuid.uuid4()), "symbol": symbol, "signal_type": signal_type,
            "position_size_recommended": volume, "entry_price": entry, "risk_approval_status": "approved",
            "timeframe": "H1", "signal_timestamp": now, "created_at": now, "model_version": "demo",
            "confidence_score": 0.72, **fields,
        }  # fmt: skip

    eur, jpy, gold, gbp, aud = (quotes[s] for s in ("EURUSD", "USDJPY", "XAUUSD", "GBPUSD", "AUDUSD"))
    first = signal("EURUSD", "buy", 0.10, eur.ask, stop_loss=round(eur.ask - 0.0030, 5), take_profit=round(eur.ask + 0.0060, 5))
    return [
        # Gold first: it moves fastest, and its price is read before anything is sent.
        ("market buy, gold", signal("XAUUSD", "buy", 0.05, gold.ask)),
        ("market buy with SL/TP", first),
        ("market sell", signal("USDJPY", "sell", 0.50, jpy.bid)),
        ("larger than the touch: partial fills", signal("GBPUSD", "buy", 8.0, gbp.ask)),
        ("limit buy below the market: rests", signal("EURUSD", "buy", 0.20, round(eur.bid - 0.0015, 5), order_type="limit")),
        ("sell stop below the market: rests", signal("AUDUSD", "sell", 0.30, round(aud.bid - 0.0020, 5), order_type="stop")),
        ("the first signal again: no second order", first),
        ("close the USDJPY short", signal("USDJPY", "close_short", 0.50, jpy.ask)),
        ("a hold signal: refused", signal("EURUSD", "hold", 0.10, eur.ask)),
        ("not approved: refused", signal("EURUSD", "buy", 0.10, eur.ask, risk_approval_status="pending")),
    ]


class Nats:
    """Just enough NATS for the demo: publish, request, and collect dead letters."""

    def __init__(self, settings: Settings) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.dead_letters: list[dict[str, Any]] = []
        self._run(self._connect(settings))

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    async def _connect(self, settings: Settings) -> None:
        self.nc = await nats.connect(settings.nats_url, **settings.nats_connect_options())

        async def dead_letter(msg: Any) -> None:
            self.dead_letters.append(msgspec.json.decode(msg.data))

        await self.nc.subscribe(settings.dead_letter_subject, cb=dead_letter)

    def publish(self, subject: str, payload: dict[str, Any]) -> None:
        async def publish() -> None:
            await self.nc.jetstream().publish(subject, msgspec.json.encode(payload))

        self._run(publish())

    def quotes(self) -> dict[str, Any]:
        async def ask() -> bytes:
            return (await self.nc.request(CONTROL_SUBJECT, encode(SimControl()), timeout=2)).data

        return decode(self._run(ask()), SimStatus).quotes

    def close(self) -> None:
        self._run(self.nc.close())


def start_simulator(settings: Settings) -> subprocess.Popen[bytes]:
    log = open(Path(settings.run_dir) / "logs" / "simulator.log", "ab")
    env = {**os.environ, **settings.nats_environment(), "SIM_STATE_FILE": str(Path(settings.run_dir) / "simulator-state.json")}
    # The simulator goes with the demo, however the demo ends.
    return subprocess.Popen(
        [sys.executable, "-m", "simulator"], env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=lambda: die_with_parent(signal.SIGTERM)
    )


def report(service: Service, sent: list[tuple[str, dict[str, Any]]], bus: Nats) -> str:
    ask = service.actor_system.ask
    order_ids = [str(order_id_for(uuid.UUID(s["signal_id"]))) for _, s in sent]
    result: QueryResult = ask(
        service.peers.recorder,
        Query(
            "SELECT toString(o.order_id), o.order_status, o.order_type, o.side, o.filled_quantity, o.quantity, "
            "o.average_fill_price, round(avgIf(e.slippage_pips, e.deal != 0), 2), countIf(e.deal != 0), o.rejection_reason, o.actor_address "
            "FROM suho_analytics.orders AS o LEFT JOIN suho_analytics.executions AS e ON e.order_id = o.order_id "
            "WHERE toString(o.order_id) IN {ids:Array(String)} "
            "GROUP BY o.order_id, o.order_status, o.order_type, o.side, o.filled_quantity, o.quantity, o.average_fill_price, o.rejection_reason, o.actor_address",
            {"ids": order_ids},
        ),
        10,
    )
    rows = {row[0]: row[1:] for row in result.rows}
    refused = {letter["payload"]: letter["reason"] for letter in bus.dead_letters}
    lines = []
    seen: set[str] = set()
    for (what, payload), order_id in zip(sent, order_ids, strict=True):
        raw = msgspec.json.encode(payload).decode()
        if order_id in rows and order_id not in seen:
            status, kind, side, filled, quantity, price, slip, deals, reason, actor = rows[order_id]
            outcome = f"{status} {filled}/{quantity}" + (f" @ {price} in {deals} deal(s), slippage {slip} pips" if deals else "")
            outcome += f" ({reason})" if reason else ""
            lines.append((what, order_id, f"{payload['symbol']} {kind} {side}", outcome, actor))
        elif order_id in seen:
            lines.append((what, order_id, payload["symbol"], "the same order: not executed twice", ""))
        else:
            lines.append((what, "", payload["symbol"], f"dead-lettered: {refused.get(raw, '?')}", ""))
        seen.add(order_id)
    positions: PositionsSnapshot = ask(service.peers.positions, GetPositions(), 10)
    return "\n\n".join(
        [
            table(["signal", "order_id", "order", "what happened", "order actor"], lines),
            "positions (from fills, hedging):\n" + positions_table(positions.positions),
        ]
    )


def run_demo(settings: Settings, keep_running: bool, keep_state: bool) -> None:
    signals = StopSignals()
    settings = msgspec.structs.replace(settings, run_dir=str(Path(settings.run_dir) / "demo"))
    claim(settings)  # first: the state of a demo that is running is never wiped
    if not keep_state:
        shutil.rmtree(settings.run_dir, ignore_errors=True)
    Path(settings.run_dir, "logs").mkdir(parents=True, exist_ok=True)
    simulator: subprocess.Popen[bytes] | None = None
    service: Service | None = None
    bus: Nats | None = None
    try:
        simulator = start_simulator(settings)
        service = Service(settings, signals)
        bus = Nats(settings)
        deadline = time.monotonic() + 20
        while True:
            try:
                quotes = bus.quotes()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        sent = demo_signals(quotes)
        for _, payload in sent:
            bus.publish(f"signals.approved.{payload['symbol']}", payload)
            time.sleep(0.3)  # one after another, so the close finds the position it closes
        print(f"sent {len(sent)} signals; letting them settle for {SETTLE_S:.0f}s...\n", flush=True)
        time.sleep(SETTLE_S)
        print(report(service, sent, bus), flush=True)
        built = quality.build(lambda query: service.actor_system.ask(service.peers.recorder, query, 10), quality.parse_since(REPORT_SINCE))
        print(f"\nexecution-quality report: {quality.write(built, Path(settings.run_dir) / 'report')}", flush=True)
        print(f"\nlogs: {settings.run_dir}/logs (service.log, simulator.log)")
        if keep_running:
            print(
                "the service and the simulator keep running; Ctrl-C stops them. Meanwhile, try\n"
                "  .venv/bin/execution-service show <order_id, or its first 8 characters>\n"
                "  .venv/bin/execution-service ps",
                flush=True,
            )
            threading.Event().wait()
    except KeyboardInterrupt as received:
        print(f"{received}: stopping", flush=True)
    finally:
        signals.ignore()
        if bus is not None:
            bus.close()
        if service is not None:
            service.stop()
        if simulator is not None:
            simulator.terminate()
            simulator.wait(10)
        print("stopped the service and the simulator", flush=True)
