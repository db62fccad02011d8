"""The wire contract: every message round-trips, and each kind of bad input gets its precise error."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path

import msgspec
import pytest

from messages import broker as wire
from messages.codec import ContractError, decode, encode
from messages.enums import (
    DealEntry,
    DealReason,
    ExitReason,
    Filling,
    Mt5OrderType,
    OrderStatus,
    OrderType,
    PositionSide,
    PositionStatus,
    Side,
    TradeAction,
)
from messages.order import (
    Alert,
    DeadLetter,
    EventKind,
    Fill,
    Order,
    OrderEvent,
    OrderStatusMessage,
    order_id_for,
)
from messages.position import Position, PositionAlert, position_id_for
from messages.signal import TradingSignal

NOW = datetime(2026, 11, 24, 10, 30, 15, 123000, tzinfo=UTC)
SIGNAL_ID = uuid.UUID("0b5c7a52-2f4e-4a43-9a77-3b1f4f4c2a10")
ORDER = Order(
    order_id=order_id_for(SIGNAL_ID),
    signal_id=SIGNAL_ID,
    symbol="EURUSD",
    side=Side.BUY,
    order_type=OrderType.LIMIT,
    quantity=0.5,
    expected_price=1.085,
    created_at=NOW,
    price=1.0845,
    stop_loss=1.08,
    take_profit=1.09,
    status=OrderStatus.PARTIALLY_FILLED,
    filled_quantity=0.2,
    deals=(11, 12),
)
FILL = Fill(
    execution_id=uuid.uuid4(),
    order_id=ORDER.order_id,
    deal=12,
    ticket=7,
    position_ticket=7,
    symbol="EURUSD",
    side=Side.BUY,
    fill_price=1.08452,
    fill_quantity=0.1,
    expected_price=1.085,
    slippage=-0.00048,
    slippage_pips=-4.8,
    commission=0.35,
    swap=0.0,
    entry=DealEntry.IN,
    reason=DealReason.CLIENT,
    execution_timestamp=NOW,
)
EVENT = OrderEvent(
    event_id=f"{ORDER.order_id}:3",
    order_id=ORDER.order_id,
    seq=3,
    kind=EventKind.PARTIAL_FILL,
    status=OrderStatus.PARTIALLY_FILLED,
    at=NOW,
    actor_address="ActorAddr-(T|:40001)",
    order=ORDER,
    fill=FILL,
)
MESSAGES = [
    TradingSignal(
        signal_id=SIGNAL_ID,
        symbol="EURUSD",
        signal_type="buy",
        risk_approval_status="approved",
        position_size_recommended=0.5,
        entry_price=1.085,
        signal_timestamp=NOW,
    ),
    ORDER,
    FILL,
    EVENT,
    OrderStatusMessage.of(EVENT),
    wire.OrderRequest(
        **msgspec.structs.asdict(OrderStatusMessage.of(EVENT)) | {"status": OrderStatus.SUBMITTED},
        action=TradeAction.PENDING,
        type=Mt5OrderType.BUY_LIMIT,
        volume=0.5,
        price=1.0845,
        sl=1.08,
        tp=1.09,
        type_filling=Filling.RETURN,
        magic=7,
        comment=ORDER.order_id.hex[:31],
    ),
    wire.BrokerFill(order_id=ORDER.order_id, ticket=7, deal=12, symbol="EURUSD", side=Side.BUY, volume=0.1, price=1.0845, timestamp=NOW),
    wire.BrokerFill(order_id=None, ticket=9, deal=13, symbol="EURUSD", side=Side.SELL, volume=0.1, price=1.08, timestamp=NOW, entry=DealEntry.OUT, reason=DealReason.SL, position=7),
    wire.BrokerError(order_id=ORDER.order_id, symbol="EURUSD", retcode=10019, comment="No money", timestamp=NOW),
    wire.BrokerPlaced(order_id=ORDER.order_id, symbol="EURUSD", ticket=7, timestamp=NOW),
    wire.BrokerCancelled(order_id=ORDER.order_id, symbol="EURUSD", ticket=7, cause=wire.CancelCause.EXPIRED, remaining=0.3, timestamp=NOW),
    wire.CancelRequest(order_id=ORDER.order_id),
    wire.ModifyRequest(order_id=ORDER.order_id, price=1.0846, sl=1.079),
    wire.RequestResult(order_id=ORDER.order_id, retcode=10009, comment="done"),
    wire.OrderStatusQuery(order_ids=[ORDER.order_id]),
    wire.OrderStatusReport(orders=[wire.BrokerOrderReport(order_id=ORDER.order_id, state=wire.BrokerOrderState.PARTIALLY_FILLED, ticket=7, volume=0.5, filled_volume=0.2)]),
    wire.PositionsQuery(symbol="EURUSD"),
    wire.PositionsReport(positions=[wire.BrokerPosition(ticket=7, symbol="EURUSD", side=Side.BUY, volume=0.2, price_open=1.0845, price_current=1.0850, opened_at=NOW)], balance=1e5),
    Position(position_id=position_id_for(7), ticket=7, opened_at=NOW, symbol="EURUSD", side=PositionSide.LONG, quantity=0.2, entry_price=1.0845, entry_order_id=ORDER.order_id),
    PositionAlert(ticket=7, symbol="EURUSD", kind="volume_mismatch", ours=0.2, broker=0.3, detail="x", corrected=False, at=NOW),
    wire.BrokerQuote(symbol="EURUSD", bid=1.0849, ask=1.0850, time=NOW, trade_allowed=False),
    wire.QuotesQuery(symbols=["EURUSD"]),
    wire.QuotesReport(quotes=[wire.BrokerQuote(symbol="XAUUSD", bid=2649.8, ask=2650.0, time=NOW)]),
    DeadLetter(
        subject="signals.approved.EURUSD", reason="hold_signal", detail="x", field=None, payload="{}", payload_size=2,
        payload_sha256="44136fa3", payload_truncated=False, stream="EXEC_SIGNALS", stream_seq=7, deliveries=1,
        signal_id=str(SIGNAL_ID), received_at=NOW,
    ),
    Alert(kind="duplicate_conflict", signal_id=str(SIGNAL_ID), detail="x", at=NOW),
]  # fmt: skip


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(message: msgspec.Struct) -> None:
    assert decode(encode(message), type(message)) == message


def signal_json(**fields: object) -> bytes:
    base: dict[str, object] = {
        "signal_id": str(SIGNAL_ID),
        "symbol": "EURUSD",
        "signal_type": "buy",
        "position_size_recommended": 0.1,
        "entry_price": 1.085,
        "risk_approval_status": "approved",
        "timeframe": "H1",
        "signal_timestamp": "2026-11-24T10:30:00Z",
        "model_version": "v3",
        "confidence_score": 0.8,
        "unknown_upstream_field": "ignored",
    }
    base.update(fields)
    return msgspec.json.encode({k: v for k, v in base.items() if v is not ...})


def test_position_size_is_accepted_as_the_volume() -> None:
    signal = decode(signal_json(position_size_recommended=..., position_size=0.3), TradingSignal)
    assert signal.volume == 0.3


@pytest.mark.parametrize(
    ("payload", "reason", "field"),
    [
        (b"{not json", "malformed_json", None),
        (b'{"signal_id": "0b5c7a52-2f4e-4a43-9a77-3b1f4f4c2a10", ', "malformed_json", None),
        (b"[1, 2]", "invalid_field", ""),
        (signal_json(entry_price="1.08"), "invalid_field", "entry_price"),
        (signal_json(signal_id="not-a-uuid"), "invalid_field", "signal_id"),
        (signal_json(signal_type="buy_more"), "invalid_field", "signal_type"),
        (signal_json(position_size_recommended=True), "invalid_field", "position_size_recommended"),
    ],
)
def test_bad_shapes_name_the_field(payload: bytes, reason: str, field: str | None) -> None:
    with pytest.raises(ContractError) as refused:
        decode(payload, TradingSignal)
    assert refused.value.reason == reason
    if field:
        assert refused.value.field == field
        assert f"$.{field}" in refused.value.detail


def clickhouse_enums() -> dict[str, list[str]]:
    sql = (Path(__file__).parent.parent / "service/migrations/001_core_tables.sql").read_text()
    found: dict[str, list[str]] = {}
    for column, body in re.findall(r"(\w+) (?:Nullable\()?Enum8\(([^)]*)\)", sql):
        found.setdefault(column, re.findall(r"'(\w+)'", body))
    return found


@pytest.mark.parametrize(
    ("column", "enum"),
    [
        ("order_status", OrderStatus),
        ("order_type", OrderType),
        ("side", Side),
        ("position_status", PositionStatus),
        ("exit_reason", ExitReason),
        ("entry", DealEntry),
        ("reason", DealReason),
    ],
)
def test_enums_match_the_clickhouse_enums(column: str, enum: type[Enum]) -> None:
    assert clickhouse_enums()[column] == [member.value for member in enum]


def test_positions_side_enum_matches() -> None:
    sql = (Path(__file__).parent.parent / "service/migrations/001_core_tables.sql").read_text()
    assert "side Enum8('long' = 1, 'short' = 2)" in sql
    assert [s.value for s in PositionSide] == ["long", "short"]


def test_order_ids_are_derived_from_the_signal() -> None:
    assert order_id_for(SIGNAL_ID) == order_id_for(uuid.UUID(str(SIGNAL_ID)))
    assert order_id_for(SIGNAL_ID) != order_id_for(uuid.uuid4())
