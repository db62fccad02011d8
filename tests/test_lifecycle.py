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
from messages.enums import OrderStatus, OrderType, Side, TimeInForce
from messages.order import MODIFY_KINDS, EventKind, Order, OrderChange, changed_fields, order_id_for
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
    # A terminal status never changes; only a filled order takes events: its position's SL/TP.
    assert {(status, kind) for (status, kind) in TRANSITIONS if status in TERMINAL} == {(OrderStatus.FILLED, kind) for kind in MODIFY_KINDS}
    assert all(TRANSITIONS[key] is key[0] for key in TRANSITIONS if key[1] in MODIFY_KINDS)


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
        (OrderStatus.CANCELLED, EventKind.MODIFY_REQUESTED),
        (OrderStatus.PENDING, EventKind.MODIFY_REQUESTED),
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


def resting(order_type: OrderType = OrderType.LIMIT, status: OrderStatus = OrderStatus.SUBMITTED) -> Order:
    return Order(**_fields(order(), order_type=order_type, status=status, price=1.08400, stop_price=1.08600, broker_order_id="7"))


@pytest.mark.parametrize("status", [OrderStatus.SUBMITTED, OrderStatus.PARTIALLY_FILLED, OrderStatus.FILLED])
def test_a_modify_keeps_the_status_and_the_order_carries_the_pending_change_until_answered(status: OrderStatus) -> None:
    change = OrderChange(request_id=uuid.uuid4(), sl=1.08000)
    requested = advance(resting(status=status), EventKind.MODIFY_REQUESTED, NOW, "A", change=change, pending_modify=change)
    assert (requested.status, requested.change, requested.order.pending_modify) == (status, change, change)
    modified = advance(requested.order, EventKind.MODIFIED, NOW, "A", change=change, pending_modify=None, **changed_fields(requested.order, change))
    assert (modified.status, modified.order.stop_loss, modified.order.pending_modify) == (status, 1.08000, None)
    refused = advance(requested.order, EventKind.MODIFY_REFUSED, NOW, "A", detail="10016 Invalid stops", change=change, pending_modify=None)
    assert (refused.status, refused.order.stop_loss, refused.order.pending_modify) == (status, None, None)


def test_a_fill_while_a_modify_is_pending_is_applied_and_keeps_the_change_pending() -> None:
    change = OrderChange(request_id=uuid.uuid4(), price=1.08450)
    o = advance(resting(), EventKind.MODIFY_REQUESTED, NOW, "A", change=change, pending_modify=change).order
    filled = apply_deal(o, deal(o, 1, 1.0, 1.08400), SYMBOLS["EURUSD"], "A")
    assert filled is not None and filled.status is OrderStatus.FILLED and filled.order.pending_modify == change


def test_an_order_that_ends_otherwise_drops_its_pending_modify() -> None:
    change = OrderChange(request_id=uuid.uuid4(), price=1.08450)
    o = advance(resting(), EventKind.MODIFY_REQUESTED, NOW, "A", change=change, pending_modify=change).order
    assert advance(o, EventKind.CANCELLED, NOW, "A").order.pending_modify is None


@pytest.mark.parametrize(
    ("order_type", "change", "fields"),
    [
        (OrderType.LIMIT, {"price": 1.08300}, {"price": 1.08300}),
        (OrderType.STOP, {"price": 1.08700}, {"stop_price": 1.08700}),
        (OrderType.STOP_LIMIT, {"price": 1.08700, "stoplimit": 1.08650}, {"stop_price": 1.08700, "price": 1.08650}),
        (OrderType.LIMIT, {"sl": 0.0, "tp": 1.09000}, {"stop_loss": None, "take_profit": 1.09000}),
        (OrderType.LIMIT, {"expiration": NOW}, {"expires_at": NOW, "time_in_force": TimeInForce.GTD}),
    ],
)
def test_a_change_in_mt5_terms_lands_on_the_order_fields(order_type: OrderType, change: dict[str, object], fields: dict[str, object]) -> None:
    assert changed_fields(resting(order_type), OrderChange(request_id=uuid.uuid4(), **change)) == fields  # type: ignore[arg-type]
