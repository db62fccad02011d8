"""The pre-trade checks and the exposure book, alone: pure functions, milliseconds.

Every reason code a signal can be refused with before anything reaches the broker is
triggered here by the case that should trigger it (the README lists them).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from messages.broker import BrokerQuote
from messages.codec import ContractError
from messages.enums import OrderStatus, OrderType, PositionSide, Side
from messages.order import Order, order_id_for
from messages.signal import SignalRefused, TradingSignal, fingerprint, parse_signal
from messages.symbols import SYMBOLS
from model.exposure import Exposure, OpenPosition, PositionsView
from model.pretrade import Limits, check_signal

NOW = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
LIMITS = Limits(price_band_pct=5.0, max_order_volume=20.0, max_symbol_exposure=10.0, min_expiry_s=30.0)
EURUSD = BrokerQuote(symbol="EURUSD", bid=1.08490, ask=1.08500, time=NOW)


def signal_json(**fields: Any) -> bytes:
    base: dict[str, Any] = {
        "signal_id": str(uuid.uuid4()),
        "symbol": "EURUSD",
        "signal_type": "buy",
        "position_size_recommended": 0.1,
        "entry_price": 1.0850,
        "stop_loss": 1.0800,
        "take_profit": 1.0900,
        "risk_approval_status": "approved",
        "signal_timestamp": "2026-12-01T09:59:59Z",
    }
    base.update(fields)
    return msgspec.json.encode({k: v for k, v in base.items() if v is not ...})


def refusal(data: bytes, subject_symbol: str | None = "EURUSD", quote: BrokerQuote | None = EURUSD) -> str | None:
    """The reason the signal is refused with, or None when it may be executed."""
    try:
        check_signal(parse_signal(data), subject_symbol, SYMBOLS, quote, LIMITS, NOW)
    except (SignalRefused, ContractError) as refused:
        return refused.reason
    return None


def test_a_valid_signal_passes() -> None:
    assert refusal(signal_json()) is None


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"risk_approval_status": "pending"}, "not_approved"),
        ({"risk_approval_status": "rejected"}, "not_approved"),
        ({"risk_approval_status": ...}, "not_approved"),
        ({"signal_type": "hold"}, "hold_signal"),
        ({"symbol": "GBPUSD"}, "symbol_mismatch"),
        ({"position_size_recommended": 0}, "non_positive_volume"),
        ({"position_size_recommended": -1.0}, "non_positive_volume"),
        ({"position_size_recommended": 0.015}, "invalid_volume"),
        ({"position_size_recommended": 1e9}, "order_volume_limit"),
        ({"position_size_recommended": None}, "missing_volume"),
        ({"entry_price": None}, "missing_price"),
        ({"stop_loss": -1.0}, "non_positive_price"),
        ({"entry_price": 1e300}, "price_out_of_band"),
        ({"entry_price": 1.20}, "price_out_of_band"),
        ({"order_type": "limit", "limit_price": 0.90, "entry_price": 0.90}, "price_out_of_band"),
        ({"order_type": "stop", "stop_price": 1.5}, "price_out_of_band"),
        # a buy's stop-loss above its entry, its take-profit below
        ({"stop_loss": 1.0860}, "invalid_stops"),
        ({"take_profit": 1.0840}, "invalid_stops"),
        # a sell's the other way round
        ({"signal_type": "sell", "stop_loss": 1.0800, "take_profit": 1.0900}, "invalid_stops"),
        # right of the entry, wrong of the market: the bid is already below the stop-loss
        ({"entry_price": 1.0900, "stop_loss": 1.0870, "take_profit": 1.0950}, "invalid_stops"),
        ({"time_in_force": "GTD"}, "missing_expiry"),
        ({"time_in_force": "GTD", "expires_at": (NOW - timedelta(minutes=1)).isoformat()}, "expiry_in_past"),
        ({"time_in_force": "GTD", "expires_at": (NOW + timedelta(seconds=5)).isoformat()}, "expiry_too_close"),
        ({"signal_type": "close_long", "position_size_recommended": -5}, "non_positive_volume"),
        ({"signal_type": "close_short", "position_size_recommended": 1e9}, "order_volume_limit"),
        ({"signal_timestamp": 1e300}, "invalid_timestamp"),
    ],
)
def test_a_signal_that_must_not_execute_is_refused_with_its_reason(fields: dict[str, Any], reason: str) -> None:
    assert refusal(signal_json(**fields)) == reason


def test_a_limit_order_is_checked_against_its_own_price() -> None:
    below = {"order_type": "limit", "limit_price": 1.0800, "entry_price": 1.0800}
    assert refusal(signal_json(**below, stop_loss=1.0750, take_profit=1.0900)) is None
    assert refusal(signal_json(**below, stop_loss=1.0820, take_profit=1.0900)) == "invalid_stops"


def test_a_day_order_is_refused_while_the_session_is_closed() -> None:
    closed = msgspec.structs.replace(EURUSD, trade_allowed=False)
    assert refusal(signal_json(time_in_force="DAY"), quote=closed) == "market_closed"
    assert refusal(signal_json(time_in_force="GTC"), quote=closed) is None


def test_nothing_is_checked_against_an_unknown_market() -> None:
    assert refusal(signal_json(), quote=None) == "no_market_quote"


def test_the_bare_subject_and_unknown_symbols_are_refused() -> None:
    assert refusal(signal_json(), subject_symbol=None) == "missing_subject_symbol"
    assert refusal(signal_json(symbol="DOGEUSD"), subject_symbol="DOGEUSD") == "unknown_symbol"


def test_a_close_without_volume_passes_and_ignores_stops() -> None:
    assert refusal(signal_json(signal_type="close_long", position_size_recommended=None, stop_loss=9.0)) is None


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"{not json", "malformed_json"),
        (b'{"a":' * 5000 + b"1" + b"}" * 5000, "malformed_json"),
        (signal_json(x=[[[[]]]]).replace(b"[[[[]]]]", b"[" * 5000 + b"]" * 5000), "malformed_json"),
        (b"\xff\xfe{}", "malformed_json"),
        (signal_json(signal_id="sig_12345"), "invalid_signal_id"),
        (signal_json(entry_price=...).replace(b"}", b',"entry_price":1e400}'), "invalid_field"),
        (signal_json(pad="x" * 70_000), "payload_too_large"),
        (signal_json(timestamp_ms=...).replace(b"}", b',"timestamp_ms":1' + b"0" * 400 + b"}"), "invalid_field"),
    ],
)
def test_a_payload_that_cannot_be_read_is_refused_with_its_reason(data: bytes, reason: str) -> None:
    with pytest.raises((ContractError, SignalRefused)) as refused:
        parse_signal(data)
    assert refused.value.reason == reason


def test_upstream_times_are_read_as_epoch_seconds_or_milliseconds() -> None:
    seconds = parse_signal(signal_json(signal_timestamp=1764583200))
    milliseconds = parse_signal(signal_json(signal_timestamp=..., timestamp_ms=1764583200000))
    expiring = parse_signal(signal_json(time_in_force="GTD", expires_at=1764583200500))
    assert seconds.signalled_at == milliseconds.signalled_at == datetime(2025, 12, 1, 10, 0, tzinfo=UTC)
    assert expiring.expiry == datetime(2025, 12, 1, 10, 0, 0, 500_000, tzinfo=UTC)


def test_the_fingerprint_tells_a_replay_from_a_conflict() -> None:
    data = signal_json()
    replay = parse_signal(data.replace(b",", b", "))  # same content, other bytes
    conflict = msgspec.structs.replace(parse_signal(data), position_size_recommended=0.2)
    assert fingerprint(parse_signal(data)) == fingerprint(replay)
    assert fingerprint(parse_signal(data)) != fingerprint(conflict)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_are_refused_with_a_reason_never_an_exception(data: bytes) -> None:
    try:
        check_signal(parse_signal(data), "EURUSD", SYMBOLS, EURUSD, LIMITS, NOW)
    except (ContractError, SignalRefused) as refused:
        assert refused.reason


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(list(TradingSignal.__struct_fields__)), JSON, max_size=8))
def test_arbitrary_json_in_the_signal_fields_is_refused_or_passes_never_raises(fields: dict[str, Any]) -> None:
    try:
        check_signal(parse_signal(signal_json(**fields)), "EURUSD", SYMBOLS, EURUSD, LIMITS, NOW)
    except (ContractError, SignalRefused) as refused:
        assert refused.reason


# --- the exposure book --------------------------------------------------------------------


def order(quantity: float, *, close: int | None = None, filled: float = 0.0, symbol: str = "EURUSD") -> Order:
    return Order(
        order_id=order_id_for(uuid.uuid4()), signal_id=uuid.uuid4(), symbol=symbol, side=Side.BUY,
        order_type=OrderType.MARKET, quantity=quantity, expected_price=1.085, created_at=NOW,
        closes_position=close is not None, close_position=close, filled_quantity=filled,
        status=OrderStatus.FILLED if filled else OrderStatus.PENDING,
    )  # fmt: skip


def position(ticket: int, quantity: float, minutes: int = 0, side: PositionSide = PositionSide.LONG) -> OpenPosition:
    return OpenPosition(ticket=ticket, symbol="EURUSD", side=side, quantity=quantity, opened_at=NOW + timedelta(minutes=minutes))


def test_a_fill_counts_once_whichever_news_comes_first() -> None:
    book, opening = Exposure(), order(2.0)
    book.track(opening)
    assert book.open_lots("EURUSD") == 2.0
    # The order ends filled before the keeper has applied its fill: still 2 lots, not 0.
    book.ended(msgspec.structs.replace(opening, filled_quantity=2.0, status=OrderStatus.FILLED), NOW)
    assert book.open_lots("EURUSD") == 2.0
    # The keeper applies it: 2 lots, in the position now, not 4.
    book.see(PositionsView(positions=[position(1, 2.0)], applied={opening.order_id: 2.0}))
    assert book.open_lots("EURUSD") == 2.0
    assert opening.order_id not in book.orders


def test_the_keeper_applying_a_fill_before_the_order_ends_counts_it_once_too() -> None:
    book, opening = Exposure(), order(2.0)
    book.track(opening)
    book.see(PositionsView(positions=[position(1, 1.5)], applied={opening.order_id: 1.5}))
    assert book.open_lots("EURUSD") == 2.0  # 1.5 held, 0.5 still to come
    book.ended(msgspec.structs.replace(opening, filled_quantity=1.5, status=OrderStatus.CANCELLED), NOW)
    assert book.open_lots("EURUSD") == 1.5


def test_the_symbol_limit_counts_positions_and_working_orders() -> None:
    book = Exposure()
    book.see(PositionsView(positions=[position(1, 6.0)], applied={}, complete=True))
    book.track(order(3.0))
    book.check_open("EURUSD", 1.0, LIMITS.max_symbol_exposure)
    with pytest.raises(SignalRefused) as refused:
        book.check_open("EURUSD", 1.01, LIMITS.max_symbol_exposure)
    assert refused.value.reason == "exposure_limit"
    book.check_open("GBPUSD", 9.0, LIMITS.max_symbol_exposure)


def test_a_close_takes_the_oldest_position_that_can_hold_it() -> None:
    book = Exposure()
    book.see(PositionsView(positions=[position(1, 0.1, minutes=0), position(2, 0.5, minutes=1)], applied={}, complete=True))
    assert book.choose_close("EURUSD", PositionSide.LONG, None) == (1, 0.1)
    assert book.choose_close("EURUSD", PositionSide.LONG, 0.05) == (1, 0.05)
    assert book.choose_close("EURUSD", PositionSide.LONG, 0.3) == (2, 0.3)
    with pytest.raises(SignalRefused) as refused:
        book.choose_close("EURUSD", PositionSide.LONG, 0.6)
    assert refused.value.reason == "close_exceeds_position"
    with pytest.raises(SignalRefused) as none:
        book.choose_close("EURUSD", PositionSide.SHORT, None)
    assert none.value.reason == "no_open_position"


def test_a_position_being_closed_is_not_closed_twice() -> None:
    book = Exposure()
    book.see(PositionsView(positions=[position(1, 0.5)], applied={}, complete=True))
    closing = order(0.5, close=1)
    book.track(closing)
    with pytest.raises(SignalRefused):
        book.choose_close("EURUSD", PositionSide.LONG, None)
    # Filled, and the keeper not told yet: still claimed.
    book.ended(msgspec.structs.replace(closing, filled_quantity=0.5, status=OrderStatus.FILLED), NOW)
    with pytest.raises(SignalRefused):
        book.choose_close("EURUSD", PositionSide.LONG, 0.1)
    book.see(PositionsView(positions=[position(1, 0.0)], applied={closing.order_id: 0.5}))
    assert book.claimed == {} and book.positions == {}


def test_an_ended_order_the_keeper_never_confirms_is_forgotten_after_a_while() -> None:
    book, opening = Exposure(), order(1.0)
    book.track(opening)
    book.ended(msgspec.structs.replace(opening, filled_quantity=1.0, status=OrderStatus.FILLED), NOW)
    book.expire(NOW + timedelta(seconds=61))
    assert book.open_lots("EURUSD") == 0.0


def test_a_close_may_wait_for_the_fills_of_an_order_that_just_opened_its_position() -> None:
    book, opening = Exposure(), order(0.5)
    book.track(opening)
    assert not book.awaiting_fills("EURUSD", PositionSide.LONG)  # working: it may never fill
    book.ended(msgspec.structs.replace(opening, filled_quantity=0.5, status=OrderStatus.FILLED), NOW)
    assert book.awaiting_fills("EURUSD", PositionSide.LONG)
    assert not book.awaiting_fills("EURUSD", PositionSide.SHORT)
    book.see(PositionsView(positions=[position(1, 0.5)], applied={opening.order_id: 0.5}))
    assert not book.awaiting_fills("EURUSD", PositionSide.LONG)
    assert book.choose_close("EURUSD", PositionSide.LONG, None) == (1, 0.5)
