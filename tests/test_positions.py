"""Positions as the fold of fills (hedging: one per broker position ticket) — pure logic."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from actors.positions import PositionBook
from messages.enums import DealEntry, DealReason, ExitReason, PositionStatus, Side
from messages.order import Fill, execution_id_for

T0 = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
ORDER = uuid.uuid4()


def fill(deal: int, ticket: int, side: Side, volume: float, price: float, entry: DealEntry = DealEntry.IN,
         reason: DealReason = DealReason.CLIENT, minutes: int = 0, symbol: str = "EURUSD") -> Fill:  # fmt: skip
    return Fill(
        execution_id=execution_id_for(deal), order_id=ORDER if reason is DealReason.CLIENT else None, deal=deal,
        ticket=ticket, position_ticket=ticket, symbol=symbol, side=side, fill_price=price, fill_quantity=volume,
        expected_price=None, slippage=None, slippage_pips=None, commission=-3.5 * volume, swap=0.0, entry=entry,
        reason=reason, execution_timestamp=T0 + timedelta(minutes=minutes),
    )  # fmt: skip


def test_partial_entry_fills_build_one_position_at_the_weighted_price() -> None:
    book = PositionBook()
    book.apply(fill(1, 10, Side.BUY, 0.4, 1.1000), 1.0950, 1.1100, T0)
    (position,) = book.apply(fill(2, 10, Side.BUY, 0.6, 1.1010), None, None, T0)
    assert position.quantity == 1.0 and position.entry_price == 1.1006  # exactly, as the order's average
    assert position.stop_loss == 1.0950 and position.side.value == "long"


def test_the_weighted_entry_and_exit_prices_are_exact_not_float_sums() -> None:
    """The demo's partial fill: 5 + 3 lots at 1.26505 and 1.26507 showed 1.2650575000000002."""
    book = PositionBook()
    book.apply(fill(1, 10, Side.BUY, 5.0, 1.26505, symbol="GBPUSD"), None, None, T0)
    (position,) = book.apply(fill(2, 10, Side.BUY, 3.0, 1.26507, symbol="GBPUSD"), None, None, T0)
    assert position.quantity == 8.0 and position.entry_price == 1.2650575
    book.apply(fill(3, 10, Side.SELL, 0.7, 1.26601, DealEntry.OUT, symbol="GBPUSD"), None, None, T0)
    (closed,) = book.apply(fill(4, 10, Side.SELL, 7.3, 1.26603, DealEntry.OUT, symbol="GBPUSD"), None, None, T0)
    assert closed.exit_price == 1.26602825 and closed.closed_quantity == 8.0


def test_a_take_profit_close_realizes_pnl_and_r_multiple() -> None:
    book = PositionBook()
    book.apply(fill(1, 10, Side.BUY, 1.0, 1.1000), 1.0950, 1.1100, T0)
    (closed,) = book.apply(fill(2, 10, Side.SELL, 1.0, 1.1100, DealEntry.OUT, DealReason.TP, minutes=90), None, None, T0)
    assert closed.position_status is PositionStatus.CLOSED and closed.exit_reason is ExitReason.TAKE_PROFIT
    assert closed.realized_pnl == pytest.approx(1000.0)  # 100 pips x 1 lot x 100,000
    assert closed.r_multiple == pytest.approx(2.0)  # risked 50 pips, made 100
    assert closed.holding_period_hours == pytest.approx(1.5)
    assert closed.quantity == 0 and closed.exit_price == pytest.approx(1.1100)


def test_a_short_stopped_out_loses() -> None:
    book = PositionBook()
    book.apply(fill(1, 11, Side.SELL, 0.5, 151.500, symbol="USDJPY"), 152.000, 150.000, T0)
    (closed,) = book.apply(fill(2, 11, Side.BUY, 0.5, 152.000, DealEntry.OUT, DealReason.SL, symbol="USDJPY"), None, None, T0)
    assert closed.exit_reason is ExitReason.STOP_LOSS
    assert closed.realized_pnl == pytest.approx(-25_000.0)  # in JPY: 0.5 lot x 100,000 x -0.5
    assert closed.r_multiple == pytest.approx(-1.0)


def test_hedging_keeps_opposite_positions_apart() -> None:
    book = PositionBook()
    book.apply(fill(1, 10, Side.BUY, 1.0, 1.1000), None, None, T0)
    book.apply(fill(2, 12, Side.SELL, 1.0, 1.1002), None, None, T0)
    assert sorted((p.ticket, p.side.value) for p in book.open_positions()) == [(10, "long"), (12, "short")]


def test_a_partial_close_leaves_the_rest_open() -> None:
    book = PositionBook()
    book.apply(fill(1, 10, Side.BUY, 1.0, 1.1000), None, None, T0)
    (position,) = book.apply(fill(2, 10, Side.SELL, 0.4, 1.1050, DealEntry.OUT), None, None, T0)
    assert position.position_status is PositionStatus.OPEN and position.quantity == pytest.approx(0.6)
    assert position.realized_pnl == pytest.approx(200.0)


def test_an_exit_that_arrives_before_its_entry_waits_for_it() -> None:
    book = PositionBook()
    assert book.apply(fill(2, 10, Side.SELL, 1.0, 1.1100, DealEntry.OUT, DealReason.TP), None, None, T0) == []
    changed = book.apply(fill(1, 10, Side.BUY, 1.0, 1.1000), None, None, T0)
    assert changed[-1].position_status is PositionStatus.CLOSED


def test_a_deal_applied_twice_counts_once() -> None:
    book = PositionBook()
    book.apply(fill(1, 10, Side.BUY, 1.0, 1.1000), None, None, T0)
    assert book.apply(fill(1, 10, Side.BUY, 1.0, 1.1000), None, None, T0) == []
    assert book.positions[10].quantity == 1.0
