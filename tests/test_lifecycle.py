"""The order state machine and the fill arithmetic (pure logic, no I/O)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from actors.lifecycle import (
    TERMINAL,
    TRANSITIONS,
    IllegalTransition,
    advance,
    apply_deal,
    slippage,
)
from messages.broker import BrokerFill
from messages.enums import OrderStatus, OrderType, Side
from messages.order import EventKind, Order, order_id_for
from messages.symbols import SYMBOLS

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def order(symbol: str = "EURUSD", side: Side = Side.BUY, quantity: float = 1.0, expected: float = 1.08500) -> Order:
    signal_id = uuid.uuid4()
    return Order(
        order_id=order_id_for(signal_id),
        signal_id=signal_id,
        symbol=symbol,
        side=side,
        order_type=OrderType.MARKET,
        quantity=quantity,
        expected_price=expected,
        created_at=NOW,
    )


def deal(o: Order, number: int, volume: float, price: float) -> BrokerFill:
    return BrokerFill(order_id=o.order_id, ticket=1, deal=number, symbol=o.symbol, side=o.side, volume=volume, price=price, timestamp=NOW, commission=-0.35, position=1)


def submitted(o: Order) -> Order:
    return advance(o, EventKind.SUBMITTED, NOW, "A").order


def test_all_seven_states_are_reachable_and_the_terminal_ones_are_final() -> None:
    reachable = {OrderStatus.PENDING} | set(TRANSITIONS.values())
    assert reachable == set(OrderStatus)
    assert not [key for key in TRANSITIONS if key[0] in TERMINAL]


def test_each_event_bumps_the_version_and_names_itself() -> None:
    event = advance(order(), EventKind.SUBMITTED, NOW, "ActorAddr-1")
    assert (event.seq, event.order.version, event.status) == (1, 1, OrderStatus.SUBMITTED)
    assert event.event_id == f"{event.order_id}:1" and event.order.actor_address == "ActorAddr-1"


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (OrderStatus.CANCELLED, EventKind.FILL),
        (OrderStatus.FILLED, EventKind.PARTIAL_FILL),
        (OrderStatus.REJECTED, EventKind.SUBMITTED),
        (OrderStatus.PENDING, EventKind.FILL),
        (OrderStatus.FILLED, EventKind.CANCELLED),
    ],
)
def test_impossible_transitions_are_refused(status: OrderStatus, kind: EventKind) -> None:
    o = Order(**_fields(order(), status=status))
    with pytest.raises(IllegalTransition):
        advance(o, kind, NOW, "A")


def _fields(o: Order, **changes: object) -> dict[str, object]:
    return {name: getattr(o, name) for name in o.__struct_fields__} | changes


def test_partial_fills_add_up_to_a_filled_order_at_the_volume_weighted_price() -> None:
    o = submitted(order(quantity=1.0))
    first = apply_deal(o, deal(o, 1, 0.4, 1.08510), SYMBOLS["EURUSD"], "A")
    assert first is not None and first.status is OrderStatus.PARTIALLY_FILLED
    second = apply_deal(first.order, deal(o, 2, 0.6, 1.08520), SYMBOLS["EURUSD"], "A")
    assert second is not None and second.status is OrderStatus.FILLED
    assert second.order.filled_quantity == pytest.approx(1.0)
    assert second.order.average_fill_price == pytest.approx((0.4 * 1.08510 + 0.6 * 1.08520) / 1.0)
    assert second.order.commission == pytest.approx(-0.70)
    assert second.order.filled_at == NOW


def test_a_duplicate_deal_is_recognised_and_not_counted_twice() -> None:
    o = submitted(order(quantity=1.0))
    first = apply_deal(o, deal(o, 1, 0.4, 1.08510), SYMBOLS["EURUSD"], "A")
    assert first is not None
    assert apply_deal(first.order, deal(o, 1, 0.4, 1.08510), SYMBOLS["EURUSD"], "A") is None


@pytest.mark.parametrize(
    ("symbol", "side", "expected", "filled", "price_units", "pips"),
    [
        ("EURUSD", Side.BUY, 1.08500, 1.08512, 0.00012, 1.2),  # paid more: adverse
        ("EURUSD", Side.SELL, 1.08500, 1.08512, -0.00012, -1.2),  # sold higher: favourable
        ("EURUSD", Side.SELL, 1.08500, 1.08470, 0.00030, 3.0),
        ("USDJPY", Side.BUY, 151.500, 151.523, 0.023, 2.3),
        ("USDJPY", Side.SELL, 151.500, 151.480, 0.020, 2.0),
        ("USDJPY", Side.BUY, 151.500, 151.490, -0.010, -1.0),
    ],
)
def test_slippage_is_signed_adverse_positive_in_price_and_pips(
    symbol: str, side: Side, expected: float, filled: float, price_units: float, pips: float
) -> None:
    got_units, got_pips = slippage(side.sign, filled, expected, SYMBOLS[symbol])
    assert got_units == pytest.approx(price_units, abs=1e-9)
    assert got_pips == pytest.approx(pips, abs=1e-9)


def test_the_fill_record_carries_its_slippage() -> None:
    o = submitted(order(symbol="USDJPY", side=Side.SELL, expected=151.500))
    event = apply_deal(o, deal(o, 5, 1.0, 151.480), SYMBOLS["USDJPY"], "A")
    assert event is not None and event.fill is not None
    assert (event.fill.slippage, event.fill.slippage_pips, event.fill.expected_price) == (pytest.approx(0.02), 2.0, 151.5)
