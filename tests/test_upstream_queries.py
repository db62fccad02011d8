"""Upstream's documented queries, unchanged, answer with what the service executed.

A real service trades a known set of orders (quotes are set, so every fill and slippage is
known): filled, rejected, cancelled, a position opened and closed at its take-profit. Then
the queries other teams would run (tests/upstream.py, verbatim) go through
``execution-service sql`` as an operator runs it, and through the service's Query path,
and their answers are checked against those orders. Also: a plain count is one row per
order; the sql command refuses anything but one read-only statement; upstream's columns and
types are ours (ClickHouse compares them with upstream's own DDL); what is dropped by hand
comes back at the next start.
"""

from __future__ import annotations

import math
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
import upstream
from harness import REPO, RunningSystem, signal, wait_until

from messages.actor import CancelOrder
from service.config import Settings
from simulator.control import SetQuote

# In trading_signals before the service starts: approved and waiting, and approved and done.
PENDING_SIGNAL, FILLED_SIGNAL = uuid.uuid4(), uuid.uuid4()

# Run before the service starts (embedded chdb has one owner at a time): upstream's rows,
# and upstream's tables from its own DDL in a database of their own, to compare with ours.
PREPARE = """
import sys, msgspec
sys.path.insert(0, "tests")
import upstream
from service.store import Store
dsn, database, signals = sys.argv[1], sys.argv[2], msgspec.json.decode(sys.argv[3])
store = Store(dsn, database)
rows = [upstream.trading_signal_row(signal_id, execution_status=status) for signal_id, status in signals]
store.client.insert(f"{database}.trading_signals", [list(r.values()) for r in rows], column_names=list(rows[0]))
store.client.command("CREATE DATABASE upstream")
for ddl in (upstream.ORDERS_DDL, upstream.POSITIONS_DDL, upstream.TRADING_SIGNALS_DDL):
    store.client.command(ddl.replace("suho_analytics.", "upstream.").rstrip().rstrip(";"))
store.close()
"""

DROP_BY_HAND = """
import sys
from service.store import connect
client = connect(sys.argv[1], sys.argv[2])
for statement in sys.argv[3:]:
    client.command(statement)
client.close()
"""


def prepare(settings: Settings) -> None:
    signals = [(str(PENDING_SIGNAL), "pending"), (str(FILLED_SIGNAL), "filled")]
    subprocess.run(
        [sys.executable, "-c", PREPARE, settings.dsn, settings.clickhouse_database, msgspec.json.encode(signals).decode()],
        check=True, cwd=REPO,
    )  # fmt: skip


@dataclass
class Executed:
    """What the test made happen, to check the queries' answers against."""

    # order_id -> (symbol, state, entry_price, fill_price, slippage_pips)
    orders: dict[uuid.UUID, tuple[str, str, float, float | None, float | None]] = field(default_factory=dict)
    # (symbol, side, quantity, entry_price) of each position still open
    open_positions: list[tuple[str, str, float, float]] = field(default_factory=list)
    closed: dict[str, Any] = field(default_factory=dict)


@pytest.fixture(scope="module")
def traded(tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str) -> Iterator[tuple[RunningSystem, Executed]]:
    # Limits wide enough for an order the broker refuses for want of margin.
    system = RunningSystem(
        tmp_path_factory.mktemp("upstream_queries"), kafka_bootstrap, prepare=prepare, reconcile_interval_s=3600,
        max_order_volume=100.0, max_symbol_exposure=1000.0,
    )  # fmt: skip
    executed = Executed()
    try:

        def filled(payload: dict[str, Any], fill: float, pips: float) -> None:
            order_id = system.send(payload)
            assert order_id is not None
            system.wait_status(order_id, "filled")
            executed.orders[order_id] = (payload["symbol"], "FILLED", payload["entry_price"], fill, pips)

        for ask, pips in ((1.08505, 0.5), (1.08510, 1.0), (1.08515, 1.5)):  # above the expected 1.08500
            system.control(set_quote=SetQuote(symbol="EURUSD", bid=ask - 0.0001, ask=ask))
            filled(signal("EURUSD", "buy", 0.1, 1.08500), ask, pips)
            executed.open_positions.append(("EURUSD", "long", 0.1, ask))
        system.control(set_quote=SetQuote(symbol="USDJPY", bid=151.485, ask=151.500))
        filled(signal("USDJPY", "sell", 0.2, 151.505), 151.485, 2.0)  # 2 pips below: adverse for a sell
        executed.open_positions.append(("USDJPY", "short", 0.2, 151.485))

        rejected = system.send(signal("EURUSD", "buy", 100.0, 1.08500))  # more margin than the account has
        assert rejected is not None
        system.wait_status(rejected, "rejected")
        executed.orders[rejected] = ("EURUSD", "REJECTED", 1.08500, None, None)

        system.control(set_quote=SetQuote(symbol="EURJPY", bid=163.790, ask=163.800))
        resting = system.send(signal("EURJPY", "buy", 0.1, 160.0, order_type="limit", limit_price=160.0))
        assert resting is not None
        wait_until(lambda: (e := system.show(resting)) and e.order is not None and not e.active, what="resting")
        system.tell("supervisor", CancelOrder(resting, "operator"))
        system.wait_status(resting, "cancelled")
        executed.orders[resting] = ("EURJPY", "CANCELLED", 160.0, None, None)

        system.control(set_quote=SetQuote(symbol="XAUUSD", bid=2649.80, ask=2650.00))
        filled(signal("XAUUSD", "buy", 0.05, 2650.0, stop_loss=2640.0, take_profit=2660.0), 2650.0, 0.0)
        system.control(set_quote=SetQuote(symbol="XAUUSD", bid=2661.0, ask=2661.2))
        system.control(step=1)  # the take-profit is hit at the broker
        executed.closed = wait_until(
            lambda: (rows := system.query("SELECT exit_price, realized_pnl FROM positions WHERE position_status = 'closed'"))
            and {"exit_price": rows[0][0], "realized_pnl": (rows[0][0] - 2650.0) * 0.05 * 100},
            what="the gold position closed at its take-profit",
        )
        wait_until(lambda: system.query("SELECT count() FROM positions")[0][0] == 5, what="positions recorded")
        yield system, executed
    finally:
        system.close()


def sql(system: RunningSystem, query: str, *params: str) -> list[tuple[str, ...]]:
    """``execution-service sql QUERY --param ...``: its table, parsed, checked against the same
    query's answer on the Query path (the CLI prints None as an empty cell)."""
    args = [arg for param in params for arg in ("--param", param)]
    done = system.cli("sql", query, *args)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    spans, start = [], 0
    for dashes in lines[1].split("  "):
        spans.append((start, start + len(dashes)))
        start += len(dashes) + 2
    rows = [tuple(line[a:b].strip() for a, b in spans) for line in lines[2:]]
    parameters = dict(param.split("=", 1) for param in params)
    direct = [tuple("" if v is None else str(v) for v in row) for row in system.query(query, **parameters)]
    assert rows == direct, (rows, direct)
    return rows


def query(system: RunningSystem, text: str, **parameters: Any) -> list[tuple[Any, ...]]:
    """On the Query path, after the same text ran unchanged through the sql command."""
    sql(system, text, *(f"{name}={value}" for name, value in parameters.items()))
    return system.query(text, **parameters)


def test_recent_orders(traded: tuple[RunningSystem, Executed]) -> None:
    system, executed = traded
    rows = query(system, upstream.RECENT_ORDERS)
    assert len(rows) == len(executed.orders)
    assert [row[8] for row in rows] == sorted((row[8] for row in rows), reverse=True)  # newest first
    got = {row[0]: (row[2], row[4], row[5], row[6], row[7]) for row in rows}
    assert got == executed.orders
    assert all(row[9] is not None for row in rows if row[4] == "FILLED")


def test_fill_rate(traded: tuple[RunningSystem, Executed]) -> None:
    system, executed = traded
    states = [state for _, state, *_ in executed.orders.values()]
    assert (states.count("FILLED"), states.count("REJECTED"), states.count("CANCELLED")) == (5, 1, 1)
    assert query(system, upstream.FILL_RATE) == [(5, 1, 1, 5 * 100.0 / 7)]


def test_average_slippage_per_symbol(traded: tuple[RunningSystem, Executed]) -> None:
    system, _ = traded
    rows = query(system, upstream.AVERAGE_SLIPPAGE)
    assert [row[0] for row in rows] == ["USDJPY", "EURUSD", "XAUUSD"]  # ordered by average, adverse first
    usdjpy, eurusd, xauusd = rows
    assert usdjpy[1:2] == (2.0,) and math.isnan(usdjpy[2]) and usdjpy[3] == 2.0  # one order: no sample deviation
    assert eurusd[1:] == pytest.approx((1.0, 0.5, 1.5))
    assert xauusd[1] == 0.0 and xauusd[3] == 0.0


def test_active_positions(traded: tuple[RunningSystem, Executed]) -> None:
    system, executed = traded
    rows = query(system, upstream.ACTIVE_POSITIONS)
    assert sorted((symbol, side, round(quantity, 8), round(entry, 8)) for symbol, side, quantity, entry, *_ in rows) == sorted(
        executed.open_positions
    )
    # The connector has not been asked for prices (no reconciliation yet): no current price.
    assert {row[4:] for row in rows} == {(None, 0.0, None)}


def test_recent_trades_and_daily_pnl(traded: tuple[RunningSystem, Executed]) -> None:
    system, executed = traded
    rows = query(system, upstream.RECENT_TRADES)
    assert len(rows) == 1
    symbol, side, entry, exit_price, realized, r_multiple, reason = rows[0]
    assert (symbol, side, entry, exit_price, reason) == ("XAUUSD", "long", 2650.0, executed.closed["exit_price"], "take_profit")
    assert realized == pytest.approx(executed.closed["realized_pnl"])
    assert r_multiple == pytest.approx(realized / (10.0 * 0.05 * 100), abs=1e-3)  # risk: 10 below the entry
    assert query(system, upstream.DAILY_PNL) == [(datetime.now(UTC).date(), pytest.approx(realized))]


def test_the_planning_guides_approved_signal(traded: tuple[RunningSystem, Executed]) -> None:
    system, _ = traded
    rows = query(system, upstream.APPROVED_SIGNAL, signal_id=PENDING_SIGNAL)
    assert [row[0] for row in rows] == [PENDING_SIGNAL]
    assert query(system, upstream.APPROVED_SIGNAL, signal_id=FILLED_SIGNAL) == []  # executed already


def test_a_plain_count_is_one_row_per_order(traded: tuple[RunningSystem, Executed]) -> None:
    system, executed = traded
    assert sql(system, "SELECT count(), min(version) FROM orders") == [(str(len(executed.orders)), "3")]
    versions = system.query("SELECT count(), uniqExact(order_id) FROM order_versions")[0]
    assert versions[1] == len(executed.orders) <= versions[0]  # (merged or not)
    assert sql(system, "SELECT count() FROM executions WHERE order_id IS NOT NULL") == [("5",)]
    assert sql(system, "SELECT count() FROM positions") == [("5",)]


def test_the_sql_command_answers_one_read_only_statement(traded: tuple[RunningSystem, Executed]) -> None:
    system, _ = traded
    refused = {
        "SELECT 1; DROP TABLE suho_analytics.positions": "Multi-statements are not allowed",
        "DROP TABLE suho_analytics.positions": "READONLY",
        "DROP TABLE suho_analytics.position_versions": "READONLY",
        "INSERT INTO suho_analytics.order_events (event_id) VALUES ('x')": "READONLY",
    }
    for statement, reason in refused.items():
        done = system.cli("sql", statement)
        assert done.returncode != 0 and reason in done.stderr, (statement, done)
    assert sql(system, "EXISTS TABLE suho_analytics.positions") == [("1",)]
    assert sql(system, "EXISTS TABLE suho_analytics.position_versions") == [("1",)]
    assert sql(system, "SELECT currentDatabase()") == [(system.settings.clickhouse_database,)]


def test_our_columns_are_upstreams(traded: tuple[RunningSystem, Executed]) -> None:
    assert_upstream_columns(traded[0])


def assert_upstream_columns(system: RunningSystem) -> None:
    """Ours against upstream's own DDL (created beside ours before the service started)."""
    for table in ("orders", "positions"):
        theirs = [row[:2] for row in system.query(f"DESCRIBE TABLE upstream.{table}")]
        ours = [row[:2] for row in system.query(f"DESCRIBE TABLE {table}")]
        assert ours[: len(theirs)] == theirs, table
    theirs = system.query("SHOW CREATE TABLE upstream.trading_signals")[0][0].replace("upstream.", "")
    ours = system.query("SHOW CREATE TABLE trading_signals")[0][0].replace("suho_analytics.", "")
    assert ours == theirs


def test_what_is_dropped_by_hand_is_back_after_a_restart(traded: tuple[RunningSystem, Executed]) -> None:
    system, executed = traded  # last: it takes the running service down and up again
    system.stop_service()
    dropped = ["DROP VIEW suho_analytics.orders", "DROP TABLE suho_analytics.position_versions", "DROP TABLE suho_analytics.trading_signals"]
    subprocess.run([sys.executable, "-c", DROP_BY_HAND, system.settings.dsn, system.settings.clickhouse_database, *dropped], check=True, cwd=REPO)
    system.start_service()
    for name in ("orders", "position_versions", "positions", "trading_signals"):
        assert system.query(f"EXISTS TABLE {name}") == [(1,)], name
    assert system.query("SELECT count() FROM orders") == [(len(executed.orders),)]
    assert_upstream_columns(system)
