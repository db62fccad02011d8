"""What other services read: the queries they would run against orders, executions and
positions return the numbers the trading produced (quotes are set, so every fill is known)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from harness import RunningSystem, signal, wait_until

from simulator.control import SetQuote


@pytest.fixture(scope="module")
def traded(tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str) -> Iterator[RunningSystem]:
    # Limits wide enough for an order the broker refuses for want of margin.
    system = RunningSystem(
        tmp_path_factory.mktemp("downstream"), kafka_bootstrap, reconcile_interval_s=3600, max_order_volume=100.0, max_symbol_exposure=1000.0
    )
    try:
        orders = []
        for ask in (1.08505, 1.08510, 1.08515):  # 0.5, 1 and 1.5 pips above the expected 1.08500 (within deviation)
            system.control(set_quote=SetQuote(symbol="EURUSD", bid=ask - 0.0001, ask=ask))
            orders.append(system.send(signal("EURUSD", "buy", 0.1, 1.08500)))
            system.wait_status(orders[-1], "filled")
        rejected = system.send(signal("EURUSD", "buy", 100.0, 1.08500))  # more margin than the account has: 10019
        system.wait_status(rejected, "rejected")
        system.control(set_quote=SetQuote(symbol="USDJPY", bid=151.485, ask=151.500))
        orders.append(system.send(signal("USDJPY", "sell", 0.2, 151.505)))  # 2 pips below: adverse for a sell
        system.wait_status(orders[-1], "filled")
        wait_until(lambda: system.query("SELECT count() FROM suho_analytics.positions")[0][0] == 4, what="positions recorded")
        yield system
    finally:
        system.close()


def test_fill_rate_per_symbol(traded: RunningSystem) -> None:
    rows = traded.query(
        "SELECT symbol, countIf(order_status = 'filled') / count() AS fill_rate "
        "FROM suho_analytics.orders GROUP BY symbol ORDER BY symbol"
    )
    assert rows == [("EURUSD", 0.75), ("USDJPY", 1.0)]


def test_average_slippage_per_symbol(traded: RunningSystem) -> None:
    rows = traded.query(
        "SELECT symbol, round(avg(slippage_pips), 4), count() FROM suho_analytics.executions "
        "WHERE order_id IS NOT NULL GROUP BY symbol ORDER BY symbol"
    )
    assert rows == [("EURUSD", 1.0, 3), ("USDJPY", 2.0, 1)]


def test_open_positions(traded: RunningSystem) -> None:
    rows = traded.query(
        "SELECT symbol, side, round(sum(quantity), 8), count() FROM suho_analytics.positions "
        "WHERE position_status = 'open' GROUP BY symbol, side ORDER BY symbol"
    )
    assert rows == [("EURUSD", "long", 0.3, 3), ("USDJPY", "short", 0.2, 1)]


def test_every_order_has_its_lifecycle_in_the_event_table(traded: RunningSystem) -> None:
    rows = traded.query(
        "SELECT o.order_status, groupArray(e.kind) FROM suho_analytics.orders AS o "
        "JOIN (SELECT order_id, kind FROM suho_analytics.order_events FINAL ORDER BY seq) AS e ON e.order_id = o.order_id "
        "GROUP BY o.order_id, o.order_status"
    )
    lifecycles = sorted((status, tuple(kinds)) for status, kinds in rows)
    assert lifecycles == sorted([("filled", ("created", "submitted", "fill"))] * 4 + [("rejected", ("created", "submitted", "rejected"))])
