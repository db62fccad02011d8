"""The paper broker's rules without NATS: executions, pending orders, positions, account, faults."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from messages.broker import (
    BrokerCancelled,
    BrokerError,
    BrokerFill,
    BrokerOrderState,
    BrokerPlaced,
    CancelCause,
    ModifyRequest,
)
from messages.enums import (
    DealEntry,
    DealReason,
    Filling,
    Mt5OrderType,
    Mt5TimeType,
    Retcode,
    Side,
    TradeAction,
)
from messages.symbols import SYMBOLS
from simulator.book import Book, BookState, BrokerConfig
from simulator.client import order_request as order
from simulator.config import load_config
from simulator.faults import Envelope, FaultInjector, Faults, Wire
from simulator.market import Market, Session, read_ticks

NOW = datetime(2025, 1, 6, 12, 0, tzinfo=UTC)
T = Mt5OrderType


def make_book(**config: object) -> Book:
    market = Market(SYMBOLS, random.Random(1), depth_step_points=2)
    market.set_quote("EURUSD", 1.10000, 1.10010)
    market.set_quote("USDJPY", 150.000, 150.010)
    session = Session.parse(str(config.pop("session", "")))
    return Book(market, BrokerConfig(ticket_base=1000, **config), session=session)  # type: ignore[arg-type]


def move(book: Book, bid: float, ask: float, symbol: str = "EURUSD", now: datetime = NOW) -> list:
    book.market.set_quote(symbol, bid, ask)
    return book.on_quote(symbol, now)


def fills(events: list) -> list[BrokerFill]:
    return [e for e in events if isinstance(e, BrokerFill)]


def rejected(book: Book, request, now: datetime = NOW) -> BrokerError:
    events, _ = book.submit(request, now)
    assert len(events) == 1 and isinstance(events[0], BrokerError), events
    assert book.order_status([request.order_id]).orders[0].state is BrokerOrderState.REJECTED
    return events[0]


# --- market orders -------------------------------------------------------------------------


@pytest.mark.parametrize(("order_type", "price", "side"), [(T.BUY, 1.10010, Side.BUY), (T.SELL, 1.10000, Side.SELL)])
def test_market_order_fills_at_the_touch_and_opens_a_position(order_type, price, side):
    book = make_book()
    request = order(order_type, 1.0, sl=None)
    events, duplicate = book.submit(request, NOW)
    assert not duplicate
    [fill] = events
    assert (fill.price, fill.volume, fill.side, fill.entry, fill.reason) == (price, 1.0, side, DealEntry.IN, DealReason.CLIENT)
    assert fill.order_id == request.order_id and fill.position == fill.ticket == 1000
    assert fill.commission == -3.5
    [position] = book.positions_report().positions
    assert (position.ticket, position.side, position.volume, position.price_open) == (1000, side, 1.0, price)
    report = book.order_status([request.order_id]).orders[0]
    assert (report.state, report.retcode, report.filled_volume, report.deals) == (BrokerOrderState.FILLED, Retcode.DONE, 1.0, [fill])


def test_an_order_larger_than_the_touch_fills_in_deals_at_worse_prices_adding_up_to_its_volume():
    book = make_book()
    request = order(T.BUY, 12.0)
    deals = fills(book.submit(request, NOW)[0])
    assert [(d.volume, d.price) for d in deals] == [(5.0, 1.10010), (5.0, 1.10012), (2.0, 1.10014)]
    assert sum(d.volume for d in deals) == 12.0
    assert len({d.deal for d in deals}) == 3
    vwap = sum(d.volume * d.price for d in deals) / 12.0
    [position] = book.positions_report().positions
    assert position.volume == 12.0 and position.price_open == pytest.approx(vwap)


def test_fok_is_rejected_when_the_book_cannot_fill_it_within_deviation():
    book = make_book()
    error = rejected(book, order(T.BUY, 12.0, deviation=2, type_filling=Filling.FOK))
    assert error.retcode == Retcode.INVALID_FILL
    assert book.positions_report().positions == []
    assert len(fills(book.submit(order(T.BUY, 10.0, deviation=2, type_filling=Filling.FOK), NOW)[0])) == 2


def test_ioc_fills_what_the_book_has_within_deviation_and_cancels_the_rest():
    book = make_book()
    request = order(T.BUY, 12.0, deviation=2, type_filling=Filling.IOC)
    events, _ = book.submit(request, NOW)
    assert [(d.volume, d.price) for d in fills(events)] == [(5.0, 1.10010), (5.0, 1.10012)]
    assert isinstance(events[-1], BrokerCancelled)
    assert (events[-1].cause, events[-1].remaining) == (CancelCause.UNFILLED, 2.0)
    report = book.order_status([request.order_id]).orders[0]
    assert (report.state, report.filled_volume) == (BrokerOrderState.CANCELLED, 10.0)
    assert move(book, 1.10000, 1.10010) == []


def test_return_keeps_the_rest_working_and_fills_it_on_a_later_tick():
    book = make_book()
    request = order(T.BUY, 12.0, deviation=2, type_filling=Filling.RETURN)
    assert len(fills(book.submit(request, NOW)[0])) == 2
    report = book.order_status([request.order_id]).orders[0]
    assert (report.state, report.retcode, report.filled_volume) == (BrokerOrderState.PARTIALLY_FILLED, Retcode.DONE_PARTIAL, 10.0)
    assert move(book, 1.10010, 1.10020) == []  # beyond the deviation bound 1.10012
    [rest] = fills(move(book, 1.09995, 1.10005))
    assert (rest.volume, rest.price, rest.position) == (2.0, 1.10005, 1000)
    assert book.order_status([request.order_id]).orders[0].state is BrokerOrderState.FILLED
    assert book.positions_report().positions[0].volume == 12.0


def test_a_market_price_beyond_deviation_from_the_requested_price_is_a_requote():
    book = make_book()
    assert rejected(book, order(T.BUY, 0.1, price=1.09900, deviation=20)).retcode == Retcode.REQUOTE
    [fill] = book.submit(order(T.BUY, 0.1, price=1.10000, deviation=20), NOW)[0]
    assert fill.price == 1.10010


# --- pending orders ------------------------------------------------------------------------

PENDING = [
    # type, price, stoplimit, quotes that do not fill, quote that fills, fill price
    (T.BUY_LIMIT, 1.09950, None, [(1.09945, 1.09955)], (1.09940, 1.09950), 1.09950),
    (T.SELL_LIMIT, 1.10100, None, [(1.10095, 1.10105)], (1.10100, 1.10110), 1.10100),
    (T.BUY_STOP, 1.10100, None, [(1.10080, 1.10090)], (1.10095, 1.10105), 1.10105),
    (T.SELL_STOP, 1.09900, None, [(1.09910, 1.09920)], (1.09895, 1.09905), 1.09895),
    # The stop triggers first (ask 1.10100), only then does the limit at 1.10050 fill.
    (T.BUY_STOP_LIMIT, 1.10100, 1.10050, [(1.10030, 1.10040), (1.10090, 1.10100), (1.10060, 1.10070)], (1.10040, 1.10050), 1.10050),
    (T.SELL_STOP_LIMIT, 1.09900, 1.09950, [(1.09960, 1.09970), (1.09900, 1.09910), (1.09930, 1.09940)], (1.09950, 1.09960), 1.09950),
]


@pytest.mark.parametrize(("order_type", "price", "stoplimit", "idle", "crossing", "fill_price"), PENDING)
def test_pending_orders_rest_until_the_price_crosses_them(order_type, price, stoplimit, idle, crossing, fill_price):
    book = make_book()
    request = order(order_type, 1.0, price=price, stoplimit=stoplimit)
    [placed] = book.submit(request, NOW)[0]
    assert isinstance(placed, BrokerPlaced) and placed.ticket == 1000 and placed.retcode == Retcode.PLACED
    assert book.order_status([request.order_id]).orders[0].state is BrokerOrderState.PLACED
    for bid, ask in idle:
        assert move(book, bid, ask) == [], (bid, ask)
    [fill] = move(book, *crossing)
    assert (fill.price, fill.volume, fill.order_id, fill.position) == (fill_price, 1.0, request.order_id, 1000)
    assert book.order_status([request.order_id]).orders[0].state is BrokerOrderState.FILLED


@pytest.mark.parametrize(
    ("order_type", "price", "stoplimit"),
    [
        (T.BUY_LIMIT, 1.10020, None),  # above the ask
        (T.SELL_LIMIT, 1.09990, None),  # below the bid
        (T.BUY_STOP, 1.10000, None),  # below the ask
        (T.SELL_STOP, 1.10010, None),  # above the bid
        (T.BUY_STOP_LIMIT, 1.10100, 1.10200),  # limit beyond the stop
        (T.SELL_STOP_LIMIT, 1.10005, 1.10100),  # stop above the bid
    ],
)
def test_pending_prices_on_the_wrong_side_of_the_market_are_invalid(order_type, price, stoplimit):
    assert rejected(make_book(), order(order_type, 1.0, price=price, stoplimit=stoplimit)).retcode == Retcode.INVALID_PRICE


def test_a_limit_order_larger_than_the_touch_fills_only_up_to_its_limit_then_keeps_working():
    book = make_book()
    request = order(T.BUY_LIMIT, 8.0, price=1.09952)
    book.submit(request, NOW)
    deals = fills(move(book, 1.09940, 1.09950))
    assert [(d.volume, d.price) for d in deals] == [(5.0, 1.09950), (3.0, 1.09952)]
    request = order(T.SELL_LIMIT, 8.0, price=1.10100, type_filling=Filling.IOC)
    book.submit(request, NOW)
    events = move(book, 1.10100, 1.10110)
    assert [(d.volume, d.price) for d in fills(events)] == [(5.0, 1.10100)]
    assert isinstance(events[-1], BrokerCancelled) and events[-1].remaining == 3.0


def test_day_and_specified_orders_expire_and_gtc_does_not():
    book = make_book(day_length_s=60.0)
    day = order(T.BUY_LIMIT, 1.0, price=1.09900, type_time=Mt5TimeType.DAY)
    specified = order(T.BUY_LIMIT, 1.0, price=1.09900, type_time=Mt5TimeType.SPECIFIED, expiration=NOW + timedelta(seconds=10))
    gtc = order(T.BUY_LIMIT, 1.0, price=1.09900)
    for request in (day, specified, gtc):
        book.submit(request, NOW)
    assert book.expire(NOW + timedelta(seconds=9)) == []
    [expired] = book.expire(NOW + timedelta(seconds=10))
    assert (expired.order_id, expired.cause, expired.remaining) == (specified.order_id, CancelCause.EXPIRED, 1.0)
    [expired] = book.expire(NOW + timedelta(seconds=60))  # the end of the 60 s "day"
    assert expired.order_id == day.order_id
    assert book.expire(NOW + timedelta(days=30)) == []
    states = [r.state for r in book.order_status([day.order_id, specified.order_id, gtc.order_id]).orders]
    assert states == [BrokerOrderState.EXPIRED, BrokerOrderState.EXPIRED, BrokerOrderState.PLACED]


def test_cancel_and_modify_a_pending_order():
    book = make_book()
    request = order(T.BUY_LIMIT, 1.0, price=1.09900)
    book.submit(request, NOW)
    change = ModifyRequest(order_id=request.order_id, price=1.09950, sl=1.09800)
    assert book.modify(change, NOW).retcode == Retcode.DONE
    assert book.modify(ModifyRequest(order_id=request.order_id, price=1.10100), NOW).retcode == Retcode.INVALID_PRICE
    assert book.modify(ModifyRequest(order_id=request.order_id, sl=1.09990), NOW).retcode == Retcode.INVALID_STOPS
    [fill] = fills(move(book, 1.09940, 1.09950))
    assert fill.price == 1.09950
    assert book.positions_report().positions[0].sl == 1.09800

    other = order(T.SELL_STOP, 1.0, price=1.09000)
    book.submit(other, NOW)
    result, events = book.cancel(other.order_id, NOW)
    assert result.retcode == Retcode.DONE
    assert [(e.cause, e.remaining) for e in events] == [(CancelCause.CLIENT, 1.0)]
    assert book.cancel(other.order_id, NOW)[0].retcode == Retcode.DONE  # idempotent
    assert book.cancel(request.order_id, NOW)[0].retcode == Retcode.REJECT  # filled
    unknown = order(T.BUY)
    assert book.cancel(unknown.order_id, NOW)[0].retcode == Retcode.INVALID
    assert book.modify(ModifyRequest(order_id=unknown.order_id, sl=1.0), NOW).retcode == Retcode.INVALID
    # Crossing the cancelled sell stop fills nothing of it (only the position's SL fires).
    assert [f.reason for f in fills(move(book, 1.08900, 1.08910))] == [DealReason.SL]
    assert book.order_status([other.order_id]).orders[0].deals == []


# --- positions, SL/TP, closes ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("order_type", "sl", "tp", "crossing", "reason", "close_price", "profit"),
    [
        (T.BUY, 1.09900, 1.10200, (1.09900, 1.09910), DealReason.SL, 1.09900, -110.0),
        (T.BUY, 1.09900, 1.10200, (1.10205, 1.10215), DealReason.TP, 1.10205, 195.0),
        (T.SELL, 1.10200, 1.09800, (1.10190, 1.10200), DealReason.SL, 1.10200, -200.0),
        (T.SELL, 1.10200, 1.09800, (1.09790, 1.09800), DealReason.TP, 1.09800, 200.0),
    ],
)
def test_sl_and_tp_close_the_position_with_a_deal_no_order_stands_behind(order_type, sl, tp, crossing, reason, close_price, profit):
    book = make_book()
    book.submit(order(order_type, 1.0, sl=sl, tp=tp), NOW)
    assert move(book, 1.10000, 1.10010) == []
    [close] = move(book, *crossing)
    assert (close.order_id, close.reason, close.entry, close.position) == (None, reason, DealEntry.OUT, 1000)
    assert (close.price, close.volume, close.side) == (close_price, 1.0, Side.SELL if order_type is T.BUY else Side.BUY)
    assert close.ticket != 1000
    report = book.positions_report()
    assert report.positions == []
    assert report.balance == pytest.approx(100_000 - 7.0 + profit)


def test_a_request_with_position_closes_that_position_partly_or_wholly():
    book = make_book()
    opening = order(T.BUY, 1.0)
    book.submit(opening, NOW)
    partial = order(T.SELL, 0.4, position=1000)
    [out] = book.submit(partial, NOW)[0]
    assert (out.entry, out.reason, out.order_id, out.position, out.price) == (DealEntry.OUT, DealReason.CLIENT, partial.order_id, 1000, 1.10000)
    assert book.positions_report().positions[0].volume == 0.6
    assert rejected(book, order(T.BUY, 0.1, position=1000)).retcode == Retcode.INVALID
    assert rejected(book, order(T.SELL, 0.7, position=1000)).retcode == Retcode.INVALID_VOLUME
    assert rejected(book, order(T.SELL, 0.1, position=4242)).retcode == Retcode.POSITION_CLOSED
    book.submit(order(T.SELL, 0.6, position=1000), NOW)
    report = book.positions_report()
    assert report.positions == []
    # Bought 1.0 at 1.10010, sold at 1.10000: -10 points on 100,000 units, and 7.0 commission.
    assert report.balance == pytest.approx(100_000 - 10.0 - 7.0)


def test_modify_moves_the_sl_of_the_position_an_order_opened():
    book = make_book()
    request = order(T.BUY, 1.0)
    book.submit(request, NOW)
    assert book.modify(ModifyRequest(order_id=request.order_id, sl=1.10005), NOW).retcode == Retcode.INVALID_STOPS
    assert book.modify(ModifyRequest(order_id=request.order_id, sl=1.09950, tp=1.10100), NOW).retcode == Retcode.DONE
    [close] = move(book, 1.09950, 1.09960)
    assert close.reason is DealReason.SL
    assert book.modify(ModifyRequest(order_id=request.order_id, sl=1.0), NOW).retcode == Retcode.POSITION_CLOSED


def test_account_margin_equity_and_conversion_to_the_account_currency():
    book = make_book()
    book.submit(order(T.BUY, 1.0), NOW)
    book.submit(order(T.BUY, 1.0, symbol="USDJPY"), NOW)
    report = book.positions_report()
    # EURUSD: 100,000 * 1.10010 / 100 USD; USDJPY: 100,000 * 150.010 / 100 JPY at the 150.005 mid.
    assert report.margin == pytest.approx(1100.10 + 150_010 / 150.005, abs=0.01)
    profit = sum(p.profit for p in report.positions)
    assert report.positions[0].profit == -10.0
    assert report.balance == 100_000 - 7.0
    assert report.equity == pytest.approx(report.balance + profit, abs=0.01)
    assert report.margin_free == pytest.approx(report.equity - report.margin, abs=0.01)
    assert [p.symbol for p in book.positions_report("USDJPY").positions] == ["USDJPY"]


# --- rejections --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_fields", "retcode"),
    [
        (dict(symbol="FOOBAR"), Retcode.INVALID),
        (dict(side=Side.SELL), Retcode.INVALID),
        (dict(action=TradeAction.PENDING), Retcode.INVALID),
        (dict(type=T.BUY_LIMIT, action=TradeAction.DEAL), Retcode.INVALID),
        (dict(type=T.BUY_LIMIT, action=TradeAction.PENDING), Retcode.INVALID),  # no price
        (dict(type=T.BUY_STOP_LIMIT, action=TradeAction.PENDING, price=1.102), Retcode.INVALID),  # no stoplimit
        (dict(volume=0.001), Retcode.INVALID_VOLUME),
        (dict(volume=101.0), Retcode.INVALID_VOLUME),
        (dict(volume=0.015), Retcode.INVALID_VOLUME),
        (dict(sl=1.10050), Retcode.INVALID_STOPS),  # a buy's SL above the bid
        (dict(tp=1.09990), Retcode.INVALID_STOPS),  # a buy's TP below the bid
        (dict(type=T.SELL, side=Side.SELL, sl=1.09990), Retcode.INVALID_STOPS),  # a sell's SL below the ask
        (dict(type=T.BUY_LIMIT, action=TradeAction.PENDING, price=1.099, sl=1.0995), Retcode.INVALID_STOPS),
        (dict(type=T.BUY_LIMIT, action=TradeAction.PENDING, price=1.099, type_time=Mt5TimeType.SPECIFIED), Retcode.INVALID_EXPIRATION),
        (dict(volume=100.0), Retcode.NO_MONEY),
    ],
)
def test_invalid_orders_are_rejected_with_mt5_retcodes(request_fields, retcode):
    book = make_book()
    error = rejected(book, _order_with(**request_fields))
    assert error.retcode == retcode, error.comment
    assert book.positions_report().positions == []


def _order_with(**fields: object):
    base = order(T.BUY, 0.1)
    return msgspec.structs.replace(base, **fields)


def test_market_closed_outside_the_session_hours():
    book = make_book(session="08:00-17:00")
    assert rejected(book, order(T.BUY, 0.1), NOW.replace(hour=18)).retcode == Retcode.MARKET_CLOSED
    assert fills(book.submit(order(T.BUY, 0.1), NOW)[0])
    overnight = Session.parse("22:00-06:00")
    assert overnight.is_open(NOW.replace(hour=23)) and overnight.is_open(NOW.replace(hour=5))
    assert not overnight.is_open(NOW)


def test_no_money_counts_the_margin_already_used():
    book = make_book(balance=2000.0)
    assert fills(book.submit(order(T.BUY, 1.0), NOW)[0])  # 1,100.10 margin
    assert rejected(book, order(T.BUY, 1.0)).retcode == Retcode.NO_MONEY


def test_an_injected_fault_rejects_an_otherwise_valid_order():
    book = make_book()
    [error] = book.submit(order(T.BUY, 0.1), NOW, (Retcode.PRICE_OFF, "Price off"))[0]
    assert isinstance(error, BrokerError) and error.retcode == Retcode.PRICE_OFF
    assert book.positions_report().positions == []


# --- idempotency and persistence ---------------------------------------------------------------


def test_the_same_order_id_twice_is_one_order_with_the_first_outcome():
    book = make_book()
    request = order(T.BUY, 12.0)
    first, _ = book.submit(request, NOW)
    move(book, 1.20000, 1.20010)
    again, duplicate = book.submit(request, NOW + timedelta(seconds=5))
    assert duplicate and again == first
    assert len(book.positions_report().positions) == 1
    bad = _order_with(volume=0.001)
    assert book.submit(bad, NOW)[0] == book.submit(bad, NOW)[0]


def test_the_book_survives_a_snapshot_round_trip_and_keeps_numbering():
    book = make_book()
    market_order = order(T.BUY, 1.0, sl=1.09)
    pending = order(T.SELL_LIMIT, 1.0, price=1.102)
    book.submit(market_order, NOW)
    book.submit(pending, NOW)
    state = msgspec.json.decode(msgspec.json.encode(book.snapshot()), type=BookState)
    restored = Book(book.market, book.config, state=state)
    ids = [market_order.order_id, pending.order_id]
    assert restored.order_status(ids) == book.order_status(ids)
    assert restored.positions_report() == book.positions_report()
    [fill] = move(restored, 1.10200, 1.10210)
    assert fill.order_id == pending.order_id and fill.deal == 1001 and fill.ticket == 1001


def test_the_deal_history_holds_every_deal_in_a_time_range_and_survives_a_snapshot():
    book = make_book()
    later = NOW + timedelta(hours=1)
    opening = order(T.BUY, 1.0, tp=1.10500)
    [bought] = fills(book.submit(opening, NOW)[0])
    [closed] = fills(move(book, 1.10500, 1.10510, now=later))  # the TP: no order behind it
    [sold] = fills(book.submit(order(T.SELL, 0.5), later + timedelta(hours=1))[0])
    assert (closed.order_id, closed.reason, closed.entry) == (None, DealReason.TP, DealEntry.OUT)
    everything = NOW + timedelta(days=1)
    assert book.deals(NOW, everything).deals == [bought, closed, sold]
    assert book.deals(NOW, NOW).deals == [bought]  # both ends included
    assert book.deals(NOW + timedelta(seconds=1), later).deals == [closed]
    assert book.deals(later + timedelta(seconds=1), everything).deals == [sold]
    assert book.deals(everything, everything + timedelta(days=1)).deals == []
    state = msgspec.json.decode(msgspec.json.encode(book.snapshot()), type=BookState)
    assert state.closes == [closed]  # the order's deals are kept with the order
    assert Book(book.market, book.config, state=state).deals(NOW, everything) == book.deals(NOW, everything)


def test_an_unreadable_order_request_is_remembered_as_rejected_under_its_order_id():
    book = make_book()
    request = order(T.BUY, 0.1)
    [error], duplicate = book.refuse(request.order_id, "EURUSD", "Invalid request: volume", NOW)
    assert not duplicate and (error.order_id, error.retcode, error.symbol) == (request.order_id, Retcode.INVALID, "EURUSD")
    [report] = book.order_status([request.order_id]).orders
    assert (report.state, report.retcode, report.comment) == (BrokerOrderState.REJECTED, Retcode.INVALID, "Invalid request: volume")
    assert book.knows(request.order_id)
    # The same order_id again, readable or not, is the same order: its first outcome, no deal.
    assert book.submit(request, NOW) == ([error], True)
    assert book.refuse(request.order_id, "EURUSD", "other", NOW) == ([error], True)
    assert book.positions_report().positions == []
    filled = order(T.BUY, 0.1)
    first, _ = book.submit(filled, NOW)
    assert book.refuse(filled.order_id, "EURUSD", "Invalid request", NOW) == (first, True)
    state = msgspec.json.decode(msgspec.json.encode(book.snapshot()), type=BookState)
    assert Book(book.market, book.config, state=state).order_status([request.order_id]).orders == [report]


def test_a_state_file_written_before_deal_history_and_refusals_still_loads():
    book = make_book()
    request = order(T.BUY, 0.1)
    book.submit(request, NOW)
    old = msgspec.json.decode(msgspec.json.encode(book.snapshot()))
    del old["closes"], old["refused"]
    state = msgspec.json.decode(msgspec.json.encode(old), type=BookState)
    restored = Book(book.market, book.config, state=state)
    assert restored.deals(NOW, NOW).deals == book.order_status([request.order_id]).orders[0].deals


def test_adjust_position_plants_a_silent_discrepancy():
    book = make_book()
    book.submit(order(T.BUY, 1.0), NOW)
    assert book.adjust_position(1000, 0.5)
    assert book.positions_report().positions[0].volume == 0.5
    assert book.adjust_position(1000, 0.0)
    assert book.positions_report().positions == []
    assert book.positions_report().margin == 0.0
    assert not book.adjust_position(1000, 1.0)


# --- market and faults are deterministic under the seed --------------------------------------------


def test_the_random_walk_is_deterministic_under_the_seed():
    def walk(seed: str) -> list:
        market = Market(SYMBOLS, random.Random(seed))
        quotes = []
        for _ in range(50):
            market.step()
            quotes.append(dict(market.quotes))
        return quotes

    assert walk("1:market") == walk("1:market")
    assert walk("1:market") != walk("2:market")
    last = walk("1:market")[-1]
    for symbol, quote in last.items():
        spec = SYMBOLS[symbol]
        assert round(quote.ask - quote.bid, spec.digits) == round(spec.typical_spread_points * spec.point, spec.digits)
        assert quote.bid == round(quote.bid, spec.digits)


def test_the_wire_drops_duplicates_and_reorders():
    def envelope(n: int) -> Envelope:
        return Envelope("broker.fill.EURUSD", f"fill-{n}", b"", f"fill {n}")

    assert Wire(FaultInjector(Faults(drop_rate=1.0), 1)).route(envelope(1)) == []
    copies = Wire(FaultInjector(Faults(duplicate_rate=1.0), 1)).route(envelope(1))
    assert [e.msg_id for e in copies] == ["fill-1", "fill-1-dup"]
    wire = Wire(FaultInjector(Faults(reorder_rate=1.0), 1))
    sent = [e.msg_id for n in range(1, 5) for e in wire.route(envelope(n))]
    assert sent == ["fill-2", "fill-1", "fill-4", "fill-3"]
    wire.route(envelope(5))
    assert [e.msg_id for e in wire.release(0.0)] == ["fill-5"]

    def decisions(seed: int) -> list[int]:
        wire = Wire(FaultInjector(Faults(drop_rate=0.3, duplicate_rate=0.3, reorder_rate=0.3), seed))
        return [len(wire.route(envelope(n))) for n in range(200)]

    assert decisions(5) == decisions(5) and decisions(5) != decisions(6)


def test_injected_errors_follow_the_rates_deterministically():
    def outcomes(seed: int) -> list:
        injector = FaultInjector(Faults(error_rate=0.2, requote_rate=0.2, price_off_rate=0.2), seed)
        return [injector.injected(TradeAction.DEAL) for _ in range(300)]

    first = outcomes(3)
    assert first == outcomes(3)
    codes = {code for code, _ in filter(None, first)}
    assert codes == {Retcode.REJECT, Retcode.REQUOTE, Retcode.PRICE_OFF}
    pending = FaultInjector(Faults(requote_rate=1.0, price_off_rate=1.0), 1)
    assert pending.injected(TradeAction.PENDING) is None


# --- configuration and tick files -------------------------------------------------------------


def test_config_from_defaults_environment_and_flags():
    env = {"EXEC_NATS_URL": "nats://10.0.0.1:4222", "EXEC_STREAM_PREFIX": "T1", "SIM_SEED": "3", "SIM_LATENCY_MS": "2", "SIM_DROP_RATE": "0.5"}
    config = load_config(["--latency-ms", "5", "--tick-ms", "0", "--stream-prefix", "T2"], env)
    assert (config.nats_url, config.seed, config.tick_ms, config.stream_prefix) == ("nats://10.0.0.1:4222", 3, 0.0, "T2")
    assert (config.faults.latency_ms, config.faults.drop_rate, config.faults.error_retcode) == (5.0, 0.5, Retcode.REJECT)
    assert load_config([], {}).nats_url == "nats://127.0.0.1:4222"


def test_ticks_are_read_from_csv_with_iso_or_epoch_times(tmp_path):
    path = tmp_path / "ticks.csv"
    path.write_text("time,symbol,bid,ask\n2025-01-06T12:00:00Z,EURUSD,1.1,1.1001\n1736164801000,USDJPY,150.0,150.01\n")
    first, second = read_ticks(path, SYMBOLS)
    assert (first.time, first.symbol, first.bid, first.ask) == (NOW, "EURUSD", 1.1, 1.1001)
    assert second.time == NOW + timedelta(seconds=1)
    path.write_text("2025-01-06T12:00:00Z,FOOBAR,1,2\n")
    with pytest.raises(ValueError, match="FOOBAR"):
        read_ticks(path, SYMBOLS)
