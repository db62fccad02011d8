"""Signals become orders, followed to their end and recorded everywhere.

Real NATS (JetStream), real Kafka, embedded ClickHouse, the simulated connector as its own
process and the multi-process actor system. Quotes are set on the simulator so every fill
price, and therefore every slippage, is known in advance.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
from harness import REPO, RunningSystem, signal, wait_until

from messages.actor import CancelOrder, QueryPositions
from messages.enums import PositionStatus
from simulator.control import AdjustPosition, SetQuote


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str) -> Iterator[RunningSystem]:
    # Limits wide enough for an order the broker refuses for want of margin.
    running = RunningSystem(
        tmp_path_factory.mktemp("execution"), kafka_bootstrap, broker_timeout_s=1.0, reconcile_interval_s=3600,
        max_order_volume=100.0, max_symbol_exposure=1000.0,
    )
    yield running
    running.close()


def quote(system: RunningSystem, symbol: str, bid: float, ask: float) -> None:
    system.control(set_quote=SetQuote(symbol=symbol, bid=bid, ask=ask))


def executions(system: RunningSystem, order_id: uuid.UUID) -> list[dict[str, object]]:
    rows = system.query(
        "SELECT deal, fill_price, fill_quantity, slippage, slippage_pips, expected_price, side "
        "FROM suho_analytics.executions WHERE order_id = {id:UUID} ORDER BY deal",
        id=order_id,
    )
    names = ["deal", "fill_price", "fill_quantity", "slippage", "slippage_pips", "expected_price", "side"]
    return [dict(zip(names, row, strict=True)) for row in rows]


def archived_kinds(system: RunningSystem, order_id: uuid.UUID) -> list[str]:
    return [e.kind.value for e in system.archive() if e.order_id == order_id]


@pytest.mark.parametrize(
    ("symbol", "side", "bid", "ask", "entry", "fill", "slippage", "pips"),
    [
        ("EURUSD", "buy", 1.08490, 1.08500, 1.08480, 1.08500, 0.00020, 2.0),
        ("EURUSD", "sell", 1.08490, 1.08500, 1.08500, 1.08490, 0.00010, 1.0),
        ("USDJPY", "buy", 151.480, 151.500, 151.510, 151.500, -0.010, -1.0),
        ("USDJPY", "sell", 151.480, 151.500, 151.500, 151.480, 0.020, 2.0),
    ],
)
def test_a_market_order_is_filled_with_its_slippage_and_recorded_everywhere(
    system: RunningSystem, symbol: str, side: str, bid: float, ask: float, entry: float, fill: float, slippage: float, pips: float
) -> None:
    quote(system, symbol, bid, ask)
    order_id = system.send(signal(symbol, side, 0.2, entry))
    assert order_id is not None
    row = system.wait_status(order_id, "filled")
    assert row["filled_quantity"] == pytest.approx(0.2)
    assert row["average_fill_price"] == pytest.approx(fill)
    assert row["actor_address"].startswith("ActorAddr-")
    (execution,) = executions(system, order_id)
    assert execution["fill_price"] == pytest.approx(fill)
    assert execution["expected_price"] == pytest.approx(entry)
    assert execution["slippage"] == pytest.approx(slippage, abs=1e-9)
    assert execution["slippage_pips"] == pytest.approx(pips)
    position = next(p for p in system.positions().positions if p.entry_order_id == order_id)
    assert (position.side.value, position.quantity, position.entry_price) == ("long" if side == "buy" else "short", 0.2, fill)
    wait_until(lambda: system.statuses_on_nats(order_id) == ["pending", "submitted", "filled"], what="statuses on NATS")
    assert wait_until(lambda: archived_kinds(system, order_id) == ["created", "submitted", "fill"], what="the archive")


def test_an_order_larger_than_the_touch_fills_in_partial_deals_that_add_up(system: RunningSystem) -> None:
    quote(system, "AUDUSD", 0.65490, 0.65500)
    order_id = system.send(signal("AUDUSD", "buy", 8.0, 0.65500))
    assert order_id is not None
    row = system.wait_status(order_id, "filled")
    deals = executions(system, order_id)
    assert len(deals) >= 2
    assert sum(d["fill_quantity"] for d in deals) == pytest.approx(8.0)
    vwap = sum(d["fill_price"] * d["fill_quantity"] for d in deals) / 8.0
    assert row["average_fill_price"] == pytest.approx(vwap)
    assert [d["fill_price"] for d in deals] == sorted(d["fill_price"] for d in deals)  # deeper is worse
    assert deals[-1]["slippage_pips"] > 0
    statuses = wait_until(lambda: (s := system.statuses_on_nats(order_id)) and s[-1] == "filled" and s, what="filled on NATS")
    assert statuses[:3] == ["pending", "submitted", "partially_filled"]


@pytest.mark.parametrize(
    ("order_type", "side", "fields", "cross"),
    [
        ("limit", "buy", {"limit_price": 1.26400}, [(1.26390, 1.26400)]),
        ("limit", "sell", {"limit_price": 1.26600}, [(1.26600, 1.26610)]),
        ("stop", "buy", {"stop_price": 1.26600}, [(1.26590, 1.26600)]),
        ("stop", "sell", {"stop_price": 1.26400}, [(1.26400, 1.26410)]),
        # MT5: the stop triggers a limit order at stoplimit, below the stop for a buy.
        ("stop_limit", "buy", {"stop_price": 1.26600, "limit_price": 1.26580}, [(1.26590, 1.26600), (1.26570, 1.26580)]),
        ("stop_limit", "sell", {"stop_price": 1.26400, "limit_price": 1.26420}, [(1.26400, 1.26410), (1.26420, 1.26430)]),
    ],
)
def test_a_pending_order_rests_without_an_actor_then_fills_when_the_price_crosses(
    system: RunningSystem, order_type: str, side: str, fields: dict[str, float], cross: list[tuple[float, float]]
) -> None:
    quote(system, "GBPUSD", 1.26490, 1.26500)
    entry = fields.get("limit_price", fields.get("stop_price"))
    order_id = system.send(signal("GBPUSD", side, 0.1, entry, order_type=order_type, **fields))
    assert order_id is not None
    row = wait_until(lambda: (r := system.order_row(order_id)) and r["broker_order_id"] and r, what="placed")
    assert row["order_status"] == "submitted" and row["order_type"] == order_type
    entry_in_directory = wait_until(lambda: (e := system.show(order_id)) and not e.active and e, what="resting")
    assert entry_in_directory.order is not None  # held by the supervisor as a resting order, no process
    for bid, ask in cross:
        quote(system, "GBPUSD", bid, ask)
    row = system.wait_status(order_id, "filled")
    assert row["filled_quantity"] == pytest.approx(0.1)
    assert wait_until(lambda: archived_kinds(system, order_id)[-1:] == ["fill"], what="archive")
    assert archived_kinds(system, order_id)[:3] == ["created", "submitted", "placed"]
    assert wait_until(lambda: system.statuses_on_nats(order_id) == ["pending", "submitted", "filled"], what="NATS")


def test_the_same_signal_twenty_times_gives_one_order_and_one_broker_submission(system: RunningSystem) -> None:
    payload = signal("EURUSD", "buy", 0.3, 1.085)
    quote(system, "EURUSD", 1.08490, 1.08500)
    order_id = system.send(payload)
    assert order_id is not None
    raw = msgspec.json.encode(payload)
    system.probe.publish_concurrently("signals.approved.EURUSD", [raw] * 10)
    for _ in range(9):
        system.send(payload)
    system.wait_status(order_id, "filled")
    later = system.send(payload)  # long after the first: known, still one order
    assert later == order_id
    wait_until(lambda: system.statuses_on_nats(order_id)[-1:] == ["filled"], what="filled on NATS")
    rows = system.query("SELECT count() FROM suho_analytics.orders WHERE signal_id = {s:UUID}", s=uuid.UUID(payload["signal_id"]))
    assert rows == [(1,)]
    # Raw rows, not the latest state: a second order for the signal would have been submitted
    # again, a second fill recorded again.
    submitted = system.query("SELECT count() FROM suho_analytics.order_events WHERE order_id = {id:UUID} AND kind = 'submitted'", id=order_id)
    assert submitted == [(1,)]
    assert system.query("SELECT count() FROM suho_analytics.execution_records WHERE order_id = {id:UUID}", id=order_id) == [(1,)]
    assert system.statuses_on_nats(order_id).count("submitted") == 1
    assert len(executions(system, order_id)) == 1


BAD_INPUT = [
    (b'{"signal_id": ', "signals.approved.EURUSD", "malformed_json"),
    (msgspec.json.encode(signal(entry="1.085")), "signals.approved.EURUSD", "invalid_field"),
    (msgspec.json.encode(signal(risk_approval_status="pending")), "signals.approved.EURUSD", "not_approved"),
    (msgspec.json.encode(signal(risk_approval_status="rejected")), "signals.approved.EURUSD", "not_approved"),
    (msgspec.json.encode(signal(signal_type="hold")), "signals.approved.EURUSD", "hold_signal"),
    (msgspec.json.encode({**signal(), "symbol": "DOGEUSD"}), "signals.approved.DOGEUSD", "unknown_symbol"),
    (msgspec.json.encode(signal(volume=0.0)), "signals.approved.EURUSD", "non_positive_volume"),
    (msgspec.json.encode(signal(volume=-1.0)), "signals.approved.EURUSD", "non_positive_volume"),
    (msgspec.json.encode(signal()), "signals.approved.GBPUSD", "symbol_mismatch"),
]


def test_bad_input_is_dead_lettered_with_its_reason_and_the_service_keeps_serving(system: RunningSystem) -> None:
    before = len(system.dead_letters())
    for payload, subject, _ in BAD_INPUT:
        system.send(payload, subject)
    letters = wait_until(lambda: (d := system.dead_letters()[before:]) and len(d) == len(BAD_INPUT) and d, what="dead letters")
    assert [letter["reason"] for letter in letters] == [reason for _, _, reason in BAD_INPUT]
    assert letters[1]["field"] == "entry_price" and "$.entry_price" in letters[1]["detail"]
    refused_ids = [msgspec.json.decode(p)["signal_id"] for p, _, _ in BAD_INPUT[1:]]
    rows = system.query("SELECT count() FROM suho_analytics.orders WHERE toString(signal_id) IN {ids:Array(String)}", ids=refused_ids)
    assert rows == [(0,)]
    quote(system, "EURUSD", 1.08490, 1.08500)
    order_id = system.send(signal("EURUSD", "buy", 0.1, 1.085))
    assert order_id is not None
    system.wait_status(order_id, "filled")


def test_a_broker_rejection_ends_in_rejected_with_the_retcode(system: RunningSystem) -> None:
    quote(system, "XAUUSD", 2649.80, 2650.00)
    order_id = system.send(signal("XAUUSD", "buy", 100.0, 2650.0))  # more margin than the account has
    assert order_id is not None
    row = system.wait_status(order_id, "rejected")
    assert row["rejection_reason"].startswith("10019")
    assert executions(system, order_id) == []
    assert wait_until(lambda: system.statuses_on_nats(order_id) == ["pending", "submitted", "rejected"], what="NATS")


def test_a_silent_connector_is_asked_and_the_order_ends_in_the_brokers_state(system: RunningSystem) -> None:
    quote(system, "USDCHF", 0.88490, 0.88500)
    system.control(silent_for_s=2.5)
    order_id = system.send(signal("USDCHF", "buy", 0.1, 0.885))
    assert order_id is not None
    row = system.wait_status(order_id, "filled", timeout_s=20)
    assert row["average_fill_price"] == pytest.approx(0.88500)
    kinds = wait_until(lambda: (k := archived_kinds(system, order_id)) and k[-1] == "fill" and k, what="archive")
    assert "queried" in kinds  # the fill was learned from the status query, not from a fill message
    assert len(executions(system, order_id)) == 1


@pytest.mark.parametrize(("retcode", "executed", "status"), [(10012, 1.0, "filled"), (10031, 0.0, "failed")])
def test_an_unknown_outcome_is_asked_about_and_never_assumed_rejected(system: RunningSystem, retcode: int, executed: float, status: str) -> None:
    quote(system, "AUDUSD", 0.65490, 0.65500)
    system.control(unknown_outcome_rate=1.0, unknown_outcome_executed=executed, unknown_outcome_retcode=retcode)
    try:
        order_id = system.send(signal("AUDUSD", "buy", 0.1, 0.655))
        assert order_id is not None
        row = system.wait_status(order_id, status, timeout_s=30)
    finally:
        system.control(unknown_outcome_rate=0.0)
    end = "fill" if executed else "failed"
    kinds = wait_until(lambda: (k := archived_kinds(system, order_id)) and k[-1] == end and k, what="archive")
    assert "outcome_unknown" in kinds and "rejected" not in kinds and row["rejection_reason"] is None
    assert len(executions(system, order_id)) == (1 if executed else 0)
    assert wait_until(lambda: system.statuses_on_nats(order_id) == ["pending", "submitted", status], what="NATS")


def test_an_operator_cancels_a_resting_order(system: RunningSystem) -> None:
    quote(system, "EURJPY", 163.790, 163.800)
    order_id = system.send(signal("EURJPY", "buy", 0.1, 160.0, order_type="limit", limit_price=160.0))
    assert order_id is not None
    wait_until(lambda: (e := system.show(order_id)) and e.order is not None and not e.active, what="resting")
    system.tell("supervisor", CancelOrder(order_id, "operator"))
    row = system.wait_status(order_id, "cancelled")
    assert row["cancelled_at"] is not None and row["filled_quantity"] == 0
    kinds = wait_until(lambda: (k := archived_kinds(system, order_id)) and k[-1] == "cancelled" and k, what="archive")
    assert "cancel_requested" in kinds


def test_a_gtd_order_expires_at_the_broker_and_ends_cancelled(system: RunningSystem) -> None:
    quote(system, "EURJPY", 163.790, 163.800)
    expires = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    order_id = system.send(signal("EURJPY", "sell", 0.1, 170.0, order_type="limit", limit_price=170.0, time_in_force="GTD", expires_at=expires))
    assert order_id is not None
    wait_until(lambda: (e := system.show(order_id)) and e.order is not None and not e.active, what="resting")
    system.control(advance_s=600)
    system.wait_status(order_id, "cancelled")
    assert wait_until(lambda: archived_kinds(system, order_id)[-1:] == ["expired"], what="archive")


@pytest.mark.parametrize(("hit", "reason"), [("tp", "take_profit"), ("sl", "stop_loss")])
def test_stop_loss_and_take_profit_close_the_position_at_the_broker(system: RunningSystem, hit: str, reason: str) -> None:
    quote(system, "XAUUSD", 2649.80, 2650.00)
    order_id = system.send(signal("XAUUSD", "buy", 0.05, 2650.0, stop_loss=2640.0, take_profit=2660.0))
    assert order_id is not None
    system.wait_status(order_id, "filled")
    exit_bid = 2661.0 if hit == "tp" else 2639.0
    quote(system, "XAUUSD", exit_bid, exit_bid + 0.2)
    system.control(step=1)

    def closed() -> object:
        rows = system.query(
            "SELECT position_status, exit_reason, exit_price, realized_pnl, r_multiple FROM suho_analytics.positions WHERE entry_order_id = {id:UUID}",
            id=order_id,
        )
        return rows and rows[0][0] == "closed" and rows[0]

    status, exit_reason, exit_price, realized, r_multiple = wait_until(closed, what="the position closed")
    assert exit_reason == reason
    assert realized == pytest.approx((exit_price - 2650.0) * 0.05 * 100)
    assert r_multiple == pytest.approx(realized / (10.0 * 0.05 * 100), abs=1e-3)
    closing = system.query(f"SELECT count() FROM suho_analytics.executions WHERE reason = '{hit}' AND order_id IS NULL")
    assert closing[0][0] >= 1


def test_a_close_long_signal_closes_the_open_long_position(system: RunningSystem) -> None:
    quote(system, "USDCHF", 0.88490, 0.88500)
    opened = system.send(signal("USDCHF", "buy", 0.4, 0.885))
    assert opened is not None
    system.wait_status(opened, "filled")
    closer = system.send(signal("USDCHF", "close_long", 0.4, 0.8849))
    assert closer is not None
    row = system.wait_status(closer, "filled")
    assert row["side"] == "sell" and row["close_position"] is not None
    position = wait_until(
        lambda: next((p for p in system.positions().positions if p.ticket == row["close_position"] and p.position_status is PositionStatus.CLOSED), None),
        what="closed",
    )
    assert position.exit_reason is not None and position.exit_reason.value == "signal"
    assert position.exit_order_id == closer


def alerts_for(system: RunningSystem, ticket: int) -> list[dict[str, Any]]:
    return [a for a in (msgspec.json.decode(d) for _, d in system.probe.seen["positions.alert"]) if a["ticket"] == ticket]


def test_reconciliation_reports_a_discrepancy_planted_at_the_broker(system: RunningSystem) -> None:
    quote(system, "AUDUSD", 0.65490, 0.65500)
    order_id = system.send(signal("AUDUSD", "sell", 0.3, 0.6549))
    assert order_id is not None
    system.wait_status(order_id, "filled")
    ticket = next(p.ticket for p in system.positions().positions if p.entry_order_id == order_id)
    assert system.control(adjust_position=AdjustPosition(ticket=ticket, volume=0.1)).adjusted
    system.tell("positions", QueryPositions())
    alerts = wait_until(lambda: alerts_for(system, ticket), what="an alert")
    assert alerts[0]["kind"] == "volume_mismatch" and alerts[0]["ours"] == 0.3 and alerts[0]["broker"] == 0.1
    assert not alerts[0]["corrected"]
    assert next(p for p in system.positions().positions if p.ticket == ticket).quantity == 0.3  # not silently corrected
    # Alerted once while it stands, not at every reconciliation; again when it changes.
    assert system.control(adjust_position=AdjustPosition(ticket=ticket, volume=0.2)).adjusted
    system.tell("positions", QueryPositions())
    system.tell("positions", QueryPositions())
    wait_until(lambda: len(alerts_for(system, ticket)) > 1, what="the changed discrepancy's alert")
    time.sleep(1.0)  # the second reconciliation's answer, had it alerted again
    alerts = alerts_for(system, ticket)
    assert [(a["kind"], a["broker"]) for a in alerts] == [("volume_mismatch", 0.1), ("volume_mismatch", 0.2)]


def test_an_operator_traces_an_order_by_its_actor_address(system: RunningSystem) -> None:
    quote(system, "EURUSD", 1.08490, 1.08500)
    payload = signal("EURUSD", "sell", 0.1, 1.0849)
    order_id = system.send(payload)
    assert order_id is not None
    row = system.wait_status(order_id, "filled")
    env = {"EXEC_ADMIN_PORT": str(system.settings.admin_port), "PATH": str(Path(sys.executable).parent)}
    shown = subprocess.run([sys.executable, "-m", "service.cli", "show", payload["signal_id"]], env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert str(order_id) in shown.stdout and row["actor_address"] in shown.stdout
    assert "alive: no (finished" in shown.stdout
    for kind in ("created", "submitted", "fill"):
        assert kind in shown.stdout
    log = Path(system.settings.run_dir, "logs", "service.log").read_text()
    assert f"order {order_id} @ {row['actor_address']}" in log
