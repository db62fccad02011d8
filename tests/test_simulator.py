"""The paper broker against a real nats-server: the mt5-connector contract, faults, recovery.

Each test starts its own nats-server (fresh streams and consumers) and drives prices through
``sim.control`` instead of waiting on a clock. Broker news is observed as the service sees it:
through a JetStream consumer of the stream.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from nats.aio.msg import Msg
from test_simulator_book import PENDING  # the same cases, here over NATS

from messages.broker import (
    CANCEL_SUBJECT,
    DEALS_SUBJECT,
    MODIFY_SUBJECT,
    ORDER_STATUS_SUBJECT,
    POSITIONS_SUBJECT,
    QUOTES_SUBJECT,
    TICK_SUBJECT,
    BrokerCancelled,
    BrokerError,
    BrokerFill,
    BrokerOrderState,
    BrokerPlaced,
    BrokerQuote,
    CancelCause,
    DealsReport,
    OrderStatusReport,
    PositionsReport,
    QuotesQuery,
    QuotesReport,
    RequestResult,
)
from messages.codec import decode, encode
from messages.enums import (
    DealEntry,
    DealReason,
    Filling,
    Mt5OrderType,
    Mt5TimeType,
    Retcode,
    Side,
)
from messages.symbols import SYMBOLS
from simulator.client import SimClient, order_request
from simulator.config import SimConfig
from simulator.connector import NIL, Connector
from simulator.control import AdjustPosition
from simulator.faults import Faults
from simulator.local_nats import LocalNats

T = Mt5OrderType
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def nats_url(tmp_path: Path):
    with LocalNats(tmp_path / "nats") as url:
        yield url


def config(url: str, **overrides: Any) -> SimConfig:
    """Prices move only when a test says so; tickets and deals are numbered from 1000."""
    return SimConfig(**{"nats_url": url, "tick_ms": 0, "ticket_base": 1000, "seed": 7, **overrides})


@asynccontextmanager
async def running(url: str, **overrides: Any) -> AsyncIterator[SimClient]:
    """A simulator in this event loop, and a client watching broker news; quotes start at
    EURUSD 1.10000/1.10010."""
    connector = Connector(config(url, **overrides))
    await connector.start()
    client = await SimClient.connect(url, connector.config.control_subject)
    try:
        await client.watch()
        await client.set_quote("EURUSD", 1.10000, 1.10010)
        yield client
    finally:
        await client.close()
        await connector.stop()


def fills(client: SimClient, order_id: uuid.UUID | None = None) -> list[BrokerFill]:
    return client.of(BrokerFill, order_id)


def msg_ids(client: SimClient) -> list[str]:
    return [headers.get("Nats-Msg-Id", "") for _, headers, _ in client.news]


async def executed(client: SimClient, order_id: uuid.UUID, timeout: float = 3.0) -> None:
    """Until the broker has taken the order (for when the wire drops the news)."""
    deadline = time.monotonic() + timeout
    while (await client.order_status(order_id))[0].state is BrokerOrderState.UNKNOWN:
        assert time.monotonic() < deadline, f"{order_id} not executed within {timeout} s"
        await asyncio.sleep(0.01)


# --- orders on the wire ------------------------------------------------------------------------


def test_market_orders_fill_at_the_touch_durably_with_a_msg_id_per_deal(nats_url):
    async def scenario() -> None:
        async with running(nats_url) as client:
            buy, sell = order_request(T.BUY, 0.1), order_request(T.SELL, 0.2)
            await client.submit(buy, sell)
            await client.until(lambda: len(fills(client)) == 2)
            [bought], [sold] = fills(client, buy.order_id), fills(client, sell.order_id)
            assert (bought.price, bought.volume, bought.side, bought.entry) == (1.10010, 0.1, Side.BUY, DealEntry.IN)
            assert (sold.price, sold.volume, sold.side, sold.commission) == (1.10000, 0.2, Side.SELL, -0.7)
            assert [s for s, _, _ in client.news] == ["broker.fill.EURUSD", "broker.fill.EURUSD"]
            assert msg_ids(client) == [f"fill-{bought.deal}", f"fill-{sold.deal}"]
            broker_stream = await client.js.find_stream_name_by_subject("broker.fill.EURUSD")
            assert broker_stream == "EXEC_BROKER"
            assert (await client.js.stream_info(broker_stream)).state.messages == 2
            # Both orders acked once their fills were stored.
            consumer = await client.js.consumer_info("EXEC_ORDERS", "mt5-connector")
            assert consumer.num_ack_pending == 0 and consumer.num_pending == 0

    asyncio.run(scenario())


@pytest.mark.parametrize(("order_type", "price", "stoplimit", "idle", "crossing", "fill_price"), PENDING)
def test_pending_orders_are_placed_then_fill_when_the_price_crosses_them(nats_url, order_type, price, stoplimit, idle, crossing, fill_price):
    async def scenario() -> None:
        async with running(nats_url) as client:
            request = order_request(order_type, 0.5, price=price, stoplimit=stoplimit)
            await client.submit(request)
            await client.until(lambda: client.of(BrokerPlaced))
            [placed] = client.of(BrokerPlaced)
            assert (placed.order_id, placed.retcode, msg_ids(client)) == (request.order_id, Retcode.PLACED, [f"placed-{request.order_id}"])
            for bid, ask in idle:
                await client.set_quote("EURUSD", bid, ask)
            [report] = await client.order_status(request.order_id)
            assert report.state is BrokerOrderState.PLACED and fills(client) == []
            await client.set_quote("EURUSD", *crossing)
            await client.until(lambda: fills(client))
            [fill] = fills(client)
            assert (fill.order_id, fill.price, fill.volume, fill.position) == (request.order_id, fill_price, 0.5, placed.ticket)
            [report] = await client.order_status(request.order_id)
            assert (report.state, report.deals) == (BrokerOrderState.FILLED, [fill])

    asyncio.run(scenario())


def test_filling_policies_and_partial_fills_at_a_volume_weighted_price(nats_url):
    async def scenario() -> None:
        async with running(nats_url) as client:
            fok = order_request(T.BUY, 12.0, deviation=2, type_filling=Filling.FOK)
            ioc = order_request(T.BUY, 12.0, deviation=2, type_filling=Filling.IOC)
            ret = order_request(T.BUY, 12.0, deviation=2, type_filling=Filling.RETURN)
            await client.submit(fok, ioc, ret)
            await client.until(lambda: len(fills(client)) == 4 and client.of(BrokerCancelled))
            assert [e.retcode for e in client.of(BrokerError)] == [Retcode.INVALID_FILL]
            assert [(f.volume, f.price) for f in fills(client, ioc.order_id)] == [(5.0, 1.10010), (5.0, 1.10012)]
            [cancelled] = client.of(BrokerCancelled)
            assert (cancelled.order_id, cancelled.cause, cancelled.remaining) == (ioc.order_id, CancelCause.UNFILLED, 2.0)
            [report] = await client.order_status(ret.order_id)
            assert (report.state, report.filled_volume) == (BrokerOrderState.PARTIALLY_FILLED, 10.0)
            await client.set_quote("EURUSD", 1.09990, 1.10000)  # the rest fills on a later tick
            await client.until(lambda: len(fills(client, ret.order_id)) == 3)
            deals = fills(client, ret.order_id)
            assert [(f.volume, f.price) for f in deals] == [(5.0, 1.10010), (5.0, 1.10012), (2.0, 1.10000)]
            assert sum(f.volume for f in deals) == 12.0
            [report] = await client.order_status(ret.order_id)
            assert (report.state, report.filled_volume, report.deals) == (BrokerOrderState.FILLED, 12.0, deals)
            positions = {p.order_id: p for p in (await client.positions()).positions}
            vwap = sum(f.volume * f.price for f in deals) / 12.0
            assert positions[ret.order_id].volume == 12.0
            assert positions[ret.order_id].price_open == pytest.approx(vwap, abs=1e-7)

    asyncio.run(scenario())


def test_sl_and_tp_close_positions_with_deals_no_order_stands_behind(nats_url):
    async def scenario() -> None:
        async with running(nats_url) as client:
            long = order_request(T.BUY, 1.0, sl=1.09900, tp=1.10500)
            short = order_request(T.SELL, 1.0, sl=1.10500, tp=1.09950)
            await client.submit(long, short)
            await client.until(lambda: len(fills(client)) == 2)
            await client.set_quote("EURUSD", 1.09940, 1.09950)  # the short's TP (ask <= 1.09950)
            await client.set_quote("EURUSD", 1.09900, 1.09910)  # the long's SL (bid <= 1.09900)
            await client.until(lambda: len(fills(client)) == 4)
            closes = fills(client)[2:]
            assert [(c.order_id, c.reason, c.entry, c.price, c.side) for c in closes] == [
                (None, DealReason.TP, DealEntry.OUT, 1.09950, Side.BUY),
                (None, DealReason.SL, DealEntry.OUT, 1.09900, Side.SELL),
            ]
            openings = {f.order_id: f.position for f in fills(client)[:2]}
            assert [c.position for c in closes] == [openings[short.order_id], openings[long.order_id]]
            report = await client.positions()
            # Short 1.10000 -> 1.09950: +50; long 1.10010 -> 1.09900: -110; 4 deals of 3.5 commission.
            assert report.positions == [] and report.balance == pytest.approx(100_000 + 50 - 110 - 14)

    asyncio.run(scenario())


def test_a_request_with_position_closes_that_position(nats_url):
    async def scenario() -> None:
        async with running(nats_url) as client:
            opening = order_request(T.BUY, 1.0)
            await client.submit(opening)
            await client.until(lambda: fills(client))
            ticket = fills(client)[0].position
            closing = order_request(T.SELL, 0.4, position=ticket)
            await client.submit(closing)
            await client.until(lambda: len(fills(client)) == 2)
            [out] = fills(client, closing.order_id)
            assert (out.entry, out.reason, out.position, out.volume) == (DealEntry.OUT, DealReason.CLIENT, ticket, 0.4)
            [position] = (await client.positions("EURUSD")).positions
            assert (position.ticket, position.volume) == (ticket, 0.6)

    asyncio.run(scenario())


def test_every_rejection_reaches_broker_error_with_its_mt5_retcode(nats_url):
    async def scenario() -> None:
        async with running(nats_url) as client:
            soon = datetime.now(UTC) - timedelta(seconds=1)
            cases = {
                Retcode.INVALID: order_request(T.BUY, 0.1, symbol="FOOBAR"),
                Retcode.INVALID_VOLUME: order_request(T.BUY, 0.015),
                Retcode.INVALID_PRICE: order_request(T.BUY_LIMIT, 0.1, price=1.10500),
                Retcode.INVALID_STOPS: order_request(T.BUY, 0.1, sl=1.10200),
                Retcode.NO_MONEY: order_request(T.BUY, 100.0),
                Retcode.REQUOTE: order_request(T.BUY, 0.1, price=1.09000),
                Retcode.INVALID_EXPIRATION: order_request(T.BUY_LIMIT, 0.1, price=1.099, type_time=Mt5TimeType.SPECIFIED, expiration=soon),
                Retcode.INVALID_FILL: order_request(T.BUY, 12.0, deviation=2, type_filling=Filling.FOK),
                Retcode.POSITION_CLOSED: order_request(T.SELL, 0.1, position=424242),
            }
            await client.submit(*cases.values())
            await client.until(lambda: len(client.of(BrokerError)) == len(cases))
            got = {e.order_id: e for e in client.of(BrokerError)}
            for retcode, request in cases.items():
                assert got[request.order_id].retcode == retcode, got[request.order_id]
                [report] = await client.order_status(request.order_id)
                assert (report.state, report.retcode) == (BrokerOrderState.REJECTED, retcode)
            assert "broker.error.FOOBAR" in [s for s, _, _ in client.news]
            assert f"error-{cases[Retcode.NO_MONEY].order_id}" in msg_ids(client)

            # A malformed request: 10013 if an order_id can be read from it, and never a crash.
            broken = uuid.uuid4()
            await client.js.publish("orders.submitted.EURUSD", b'{"order_id": "%s", "symbol": "EURUSD", "volume": "x"}' % str(broken).encode())
            await client.js.publish("orders.submitted.EURUSD", b"not json at all")
            await client.until(lambda: client.of(BrokerError, broken))
            assert client.of(BrokerError, broken)[0].retcode == Retcode.INVALID
            # ... and it stays that order's outcome: rejected in order_status, never executed.
            [report] = await client.order_status(broken)
            assert (report.state, report.retcode) == (BrokerOrderState.REJECTED, Retcode.INVALID) and "volume" in report.comment
            await client.submit(order_request(T.BUY, 0.1, order_id=broken), msg_id="readable-now")
            # A symbol that cannot be a subject token is published under broker.error._invalid.
            odd = uuid.uuid4()
            await client.js.publish("orders.submitted.EURUSD", encode({"order_id": str(odd), "symbol": "EUR USD.*", "volume": "x"}))
            await client.until(lambda: client.of(BrokerError, odd))
            assert [s for s, _, n in client.news if getattr(n, "order_id", None) == odd] == ["broker.error._invalid"]
            assert client.of(BrokerError, odd)[0].symbol == "EUR USD.*"
            assert (await client.order_status(broken))[0].state is BrokerOrderState.REJECTED
            assert fills(client, broken) == [] and len(client.of(BrokerError, broken)) == 1

            # Requote / price off at a configured rate; errors with a chosen retcode.
            for switches, retcode in ((dict(price_off_rate=1.0), Retcode.PRICE_OFF), (dict(requote_rate=1.0), Retcode.REQUOTE)):
                await client.control(**{"price_off_rate": 0.0, "requote_rate": 0.0, **switches})
                request = order_request(T.BUY, 0.1)
                await client.submit(request)
                await client.until(lambda: client.of(BrokerError, request.order_id))
                assert client.of(BrokerError, request.order_id)[0].retcode == retcode
            await client.control(requote_rate=0.0)
            fine = order_request(T.BUY, 0.1)
            await client.submit(fine)
            await client.until(lambda: fills(client, fine.order_id))

    asyncio.run(scenario())


def test_market_closed_outside_the_session_hours(nats_url):
    now = datetime.now(UTC)
    session = f"{(now + timedelta(hours=1)):%H:%M}-{(now + timedelta(hours=2)):%H:%M}"

    async def scenario() -> None:
        async with running(nats_url, session=session) as client:
            request = order_request(T.BUY, 0.1)
            await client.submit(request)
            await client.until(lambda: client.of(BrokerError))
            assert client.of(BrokerError)[0].retcode == Retcode.MARKET_CLOSED

    asyncio.run(scenario())


def test_quotes_are_answered_and_every_change_is_published_as_a_tick(nats_url):
    now = datetime.now(UTC)
    closed = f"{(now + timedelta(hours=1)):%H:%M}-{(now + timedelta(hours=2)):%H:%M}"

    async def scenario() -> None:
        async with running(nats_url, session=closed) as client:
            ticks: list[BrokerQuote] = []

            async def tick(msg: Msg) -> None:
                ticks.append(decode(msg.data, BrokerQuote))

            await client.nc.subscribe(f"{TICK_SUBJECT}.>", cb=tick)
            await client.set_quote("USDJPY", 151.480, 151.500)
            await client.until(lambda: bool(ticks))
            assert (ticks[0].symbol, ticks[0].bid, ticks[0].ask, ticks[0].trade_allowed) == ("USDJPY", 151.48, 151.5, False)
            report = await client.ask(QUOTES_SUBJECT, QuotesQuery(symbols=["USDJPY", "EURUSD"]), QuotesReport)
            assert [q.symbol for q in report.quotes] == ["EURUSD", "USDJPY"]
            assert (report.quotes[1].bid, report.quotes[1].ask, report.quotes[1].trade_allowed) == (151.48, 151.5, False)
            everything = await client.ask(QUOTES_SUBJECT, QuotesQuery(), QuotesReport)
            assert {q.symbol for q in everything.quotes} == set(SYMBOLS)

    asyncio.run(scenario())


def test_the_same_order_id_submitted_twice_is_one_order_with_one_outcome(nats_url):
    async def scenario() -> None:
        async with running(nats_url) as client:
            request = order_request(T.BUY, 12.0)
            bad = order_request(T.BUY, 0.001)
            await client.submit(request, bad)
            await client.until(lambda: len(fills(client)) == 3 and client.of(BrokerError))
            first = await client.order_status(request.order_id, bad.order_id)
            await client.set_quote("EURUSD", 1.20000, 1.20010)
            # Resent under other Nats-Msg-Ids, so JetStream does not drop the requests themselves.
            await client.submit(request, msg_id="again-1")
            await client.submit(bad, msg_id="again-2")
            await asyncio.sleep(0.3)
            assert await client.order_status(request.order_id, bad.order_id) == first
            assert len(fills(client)) == 3 and len(client.of(BrokerError)) == 1
            [position] = (await client.positions()).positions
            assert position.volume == 12.0

    asyncio.run(scenario())


def test_cancel_modify_status_and_positions_requests(nats_url, caplog):
    async def scenario() -> None:
        async with running(nats_url) as client:
            limit = order_request(T.BUY_LIMIT, 1.0, price=1.09900, type_time=Mt5TimeType.DAY)
            stop = order_request(T.SELL_STOP, 1.0, price=1.09800)
            market = order_request(T.BUY, 1.0)
            await client.submit(limit, stop, market)
            await client.until(lambda: len(client.of(BrokerPlaced)) == 2 and fills(client))

            assert (await client.modify(limit.order_id, price=1.09950, tp=1.10500)).retcode == Retcode.DONE
            assert (await client.modify(limit.order_id, price=1.20000)).retcode == Retcode.INVALID_PRICE
            assert (await client.modify(market.order_id, sl=1.09500)).retcode == Retcode.DONE
            result = await client.cancel(stop.order_id)
            assert (result.order_id, result.retcode) == (stop.order_id, Retcode.DONE)
            await client.until(lambda: client.of(BrokerCancelled))
            [cancelled] = client.of(BrokerCancelled)
            assert (cancelled.order_id, cancelled.cause, cancelled.remaining) == (stop.order_id, CancelCause.CLIENT, 1.0)
            assert (await client.cancel(stop.order_id)).retcode == Retcode.DONE
            assert (await client.cancel(market.order_id)).retcode == Retcode.REJECT

            await client.set_quote("EURUSD", 1.09940, 1.09950)  # the modified limit fills
            await client.until(lambda: fills(client, limit.order_id))
            unknown = uuid.uuid4()
            reports = await client.order_status(limit.order_id, stop.order_id, market.order_id, unknown)
            assert [r.state for r in reports] == [
                BrokerOrderState.FILLED,
                BrokerOrderState.CANCELLED,
                BrokerOrderState.FILLED,
                BrokerOrderState.UNKNOWN,
            ]
            assert reports[0].deals == fills(client, limit.order_id)

            report = await client.positions()
            assert {(p.order_id, p.sl, p.tp) for p in report.positions} == {(market.order_id, 1.09500, None), (limit.order_id, None, 1.10500)}
            assert report.margin == pytest.approx(1100.10 + 1099.50, abs=0.01)
            assert report.equity == pytest.approx(report.balance + sum(p.profit for p in report.positions), abs=0.01)
            assert report.balance == 100_000 - 7.0

            # A request that breaks the contract: cancel/modify get a 10013 RequestResult (with the
            # order_id if it can be read), the queries an empty report of their own type.
            for subject in (CANCEL_SUBJECT, MODIFY_SUBJECT):
                reply = await client.ask(subject, b"{not json", RequestResult)
                assert (reply.order_id, reply.retcode) == (NIL, Retcode.INVALID), subject
            reply = await client.ask(CANCEL_SUBJECT, encode({"order_id": 5}), RequestResult)
            assert reply.retcode == Retcode.INVALID and "order_id" in reply.comment
            reply = await client.ask(MODIFY_SUBJECT, encode({"order_id": str(limit.order_id), "price": "x"}), RequestResult)
            assert (reply.order_id, reply.retcode) == (limit.order_id, Retcode.INVALID) and "price" in reply.comment
            queries = ((ORDER_STATUS_SUBJECT, OrderStatusReport(orders=[])), (POSITIONS_SUBJECT, PositionsReport(positions=[])), (DEALS_SUBJECT, DealsReport(deals=[])))
            caplog.clear()
            for subject, empty in queries:
                for bad in (b"{not json", encode({"order_ids": 5, "symbol": 7, "since": "yesterday"})):
                    assert await client.ask(subject, bad, type(empty)) == empty, (subject, bad)
            assert [r.getMessage().split(":")[0] for r in caplog.records if "invalid request" in r.getMessage()] == [
                f"invalid request on {subject} (10013)" for subject, _ in queries for _ in range(2)
            ]

    asyncio.run(scenario())


def test_pending_orders_expire_with_the_simulated_day_or_their_expiration(nats_url):
    async def scenario() -> None:
        async with running(nats_url, day_length_s=3600.0) as client:
            now = datetime.now(UTC)
            day = order_request(T.BUY_LIMIT, 1.0, price=1.09900, type_time=Mt5TimeType.DAY)
            specified = order_request(T.BUY_LIMIT, 1.0, price=1.09900, type_time=Mt5TimeType.SPECIFIED, expiration=now + timedelta(seconds=30))
            gtc = order_request(T.BUY_LIMIT, 1.0, price=1.09900)
            await client.submit(day, specified, gtc)
            await client.until(lambda: len(client.of(BrokerPlaced)) == 3)
            await client.control(advance_s=31)
            await client.until(lambda: client.of(BrokerCancelled))
            await client.control(advance_s=3600)
            await client.until(lambda: len(client.of(BrokerCancelled)) == 2)
            assert [(c.order_id, c.cause) for c in client.of(BrokerCancelled)] == [
                (specified.order_id, CancelCause.EXPIRED),
                (day.order_id, CancelCause.EXPIRED),
            ]
            states = [r.state for r in await client.order_status(day.order_id, specified.order_id, gtc.order_id)]
            assert states == [BrokerOrderState.EXPIRED, BrokerOrderState.EXPIRED, BrokerOrderState.PLACED]

    asyncio.run(scenario())


# --- fault switches -----------------------------------------------------------------------


def test_dropped_fills_are_missing_on_the_wire_but_present_in_order_status(nats_url):
    async def scenario() -> None:
        async with running(nats_url, faults=Faults(drop_rate=1.0)) as client:
            lost = order_request(T.BUY, 0.1)
            await client.submit(lost)
            await asyncio.sleep(0.1)
            [report] = await client.order_status(lost.order_id)
            assert report.state is BrokerOrderState.FILLED and len(report.deals) == 1
            await client.control(drop_rate=0.0)
            seen = order_request(T.BUY, 0.1)
            await client.submit(seen)
            await client.until(lambda: fills(client))
            # The stream is ordered: had the first fill been published, it would come first.
            assert [f.order_id for f in fills(client)] == [seen.order_id]

    asyncio.run(scenario())


def test_deals_query_finds_dropped_fills_sl_tp_closes_included_in_a_time_range(nats_url, tmp_path):
    state_file = str(tmp_path / "sim-state.json")
    hour = timedelta(hours=1)

    async def scenario() -> None:
        async with running(nats_url, faults=Faults(drop_rate=1.0), state_file=state_file) as client:
            start = (await client.control()).now
            opening = order_request(T.BUY, 1.0, tp=1.10500)
            await client.submit(opening)
            await executed(client, opening.order_id)
            await client.control(advance_s=3600)
            await client.set_quote("EURUSD", 1.10500, 1.10510)  # the TP closes the position
            await client.control(advance_s=3600)
            selling = order_request(T.SELL, 0.5)
            await client.submit(selling)
            await asyncio.sleep(0.2)
            assert fills(client) == []  # every deal was dropped on the wire

            everything = await client.deals(start)
            assert [(d.order_id, d.reason, d.entry, d.side) for d in everything] == [
                (opening.order_id, DealReason.CLIENT, DealEntry.IN, Side.BUY),
                (None, DealReason.TP, DealEntry.OUT, Side.SELL),
                (selling.order_id, DealReason.CLIENT, DealEntry.IN, Side.SELL),
            ]
            bought, closed, sold = everything
            assert (closed.price, closed.position, closed.volume) == (1.10500, bought.position, 1.0)
            assert [d.deal for d in everything] == sorted(d.deal for d in everything)
            [opened_report, sold_report] = await client.order_status(opening.order_id, selling.order_id)
            assert opened_report.deals == [bought] and sold_report.deals == [sold]
            # The range: [since, until], until defaulting to now; a time without a zone is UTC.
            assert await client.deals(start, start + hour / 2) == [bought]
            assert await client.deals(start + hour / 2, start + hour * 3 / 2) == [closed]
            assert await client.deals(closed.timestamp, closed.timestamp) == [closed]
            assert await client.deals(start + hour / 2) == [closed, sold]
            assert await client.deals(sold.timestamp + timedelta(seconds=1)) == []
            assert await client.deals(start + hour, start) == []
            assert await client.deals(start.replace(tzinfo=None)) == everything
        # Kept in the state file: a restarted broker still finds them, the TP close included.
        async with running(nats_url, state_file=state_file) as client:
            assert await client.deals(start) == everything

    asyncio.run(scenario())


def test_duplicated_fills_reach_the_consumer_twice(nats_url):
    async def scenario() -> None:
        async with running(nats_url) as client:
            await client.control(duplicate_rate=1.0)
            request = order_request(T.BUY, 0.1)
            await client.submit(request)
            await client.until(lambda: len(fills(client)) == 2)
            first, copy = fills(client)
            assert first == copy
            assert msg_ids(client) == [f"fill-{first.deal}", f"fill-{first.deal}-dup"]

    asyncio.run(scenario())


def test_reordered_events_are_released_after_the_next(nats_url):
    async def scenario() -> None:
        async with running(nats_url, faults=Faults(reorder_rate=1.0)) as client:
            request = order_request(T.BUY, 12.0)
            await client.submit(request)
            await client.until(lambda: len(fills(client)) == 3)
            [report] = await client.order_status(request.order_id)
            deals = [d.deal for d in report.deals]
            # The first deal is held back and follows the second; the last, with no event after
            # it, is released by the hold limit.
            assert [f.deal for f in fills(client)] == [deals[1], deals[0], deals[2]]

    asyncio.run(scenario())


def test_error_switch_rejects_orders_with_the_chosen_retcode(nats_url):
    async def scenario() -> None:
        async with running(nats_url, faults=Faults(error_rate=1.0, error_retcode=Retcode.TIMEOUT)) as client:
            request = order_request(T.BUY_LIMIT, 0.1, price=1.09)
            await client.submit(request)
            await client.until(lambda: client.of(BrokerError))
            assert client.of(BrokerError)[0].retcode == Retcode.TIMEOUT
            [report] = await client.order_status(request.order_id)
            assert (report.state, report.retcode) == (BrokerOrderState.REJECTED, Retcode.TIMEOUT)

    asyncio.run(scenario())


def test_silence_trades_but_neither_publishes_nor_answers_until_it_ends(nats_url):
    async def scenario() -> None:
        async with running(nats_url) as client:
            status = await client.control(silent_for_s=0.6)
            assert status.silent_for_s > 0.4
            request = order_request(T.BUY, 0.1)
            await client.submit(request)
            with pytest.raises(Exception):  # noqa: B017 - nats-py raises its own timeout type
                await client.order_status(request.order_id, timeout=0.2)
            with pytest.raises(Exception):  # noqa: B017
                await client.ask(DEALS_SUBJECT, encode({"since": "2025-01-01T00:00:00Z"}), DealsReport, timeout=0.2)
            await asyncio.sleep(0.6)
            [report] = await client.order_status(request.order_id)
            assert report.state is BrokerOrderState.FILLED and len(report.deals) == 1
            assert fills(client) == []  # real silence: what it owed was not published afterwards

    asyncio.run(scenario())


def test_disconnect_closes_the_connection_and_catches_up_after_reconnecting(nats_url):
    async def scenario() -> None:
        async with running(nats_url) as client:
            await client.control(disconnect_for_s=0.5)
            await asyncio.sleep(0.1)
            request = order_request(T.BUY, 0.1)
            await client.submit(request)  # stored by JetStream while the broker is away
            with pytest.raises(Exception):  # noqa: B017 - no responders while disconnected
                await client.order_status(request.order_id, timeout=0.2)
            await client.until(lambda: fills(client), timeout=5)
            assert fills(client)[0].order_id == request.order_id
            assert (await client.control()).faults == Faults()

    asyncio.run(scenario())


def test_latency_lets_the_price_move_before_execution(nats_url):
    async def scenario() -> None:
        async with running(nats_url, faults=Faults(latency_ms=300)) as client:
            request = order_request(T.BUY, 0.1, deviation=100)
            await client.submit(request)
            await asyncio.sleep(0.05)
            [report] = await client.order_status(request.order_id)
            assert report.state is BrokerOrderState.UNKNOWN  # not executed yet
            await client.set_quote("EURUSD", 1.10040, 1.10050)
            await client.until(lambda: fills(client))
            assert fills(client)[0].price == 1.10050  # 4 points of slippage from the move

    asyncio.run(scenario())


def test_adjust_position_plants_a_discrepancy_without_any_deal(nats_url):
    async def scenario() -> None:
        async with running(nats_url) as client:
            await client.submit(order_request(T.BUY, 1.0), order_request(T.BUY, 1.0))
            await client.until(lambda: len(fills(client)) == 2)
            first, second = (f.position for f in fills(client))
            assert (await client.control(adjust_position=AdjustPosition(ticket=first, volume=0.0))).adjusted
            assert (await client.control(adjust_position=AdjustPosition(ticket=second, volume=0.3))).adjusted
            assert not (await client.control(adjust_position=AdjustPosition(ticket=999, volume=1.0))).adjusted
            assert [(p.ticket, p.volume) for p in (await client.positions()).positions] == [(second, 0.3)]
            await asyncio.sleep(0.1)
            assert len(fills(client)) == 2

    asyncio.run(scenario())


# --- determinism, recovery, deployment ----------------------------------------------------------


def test_same_seed_and_inputs_give_the_same_prices_fills_and_faults(tmp_path):
    async def scenario(url: str, seed: int) -> tuple:
        async with running(url, seed=seed, faults=Faults(drop_rate=0.3, duplicate_rate=0.3)) as client:
            await client.control(step=20)
            ids = [uuid.UUID(int=n + 1) for n in range(6)]
            for n, order_id in enumerate(ids):
                await client.submit(order_request(T.SELL if n % 2 else T.BUY, 0.5 + n * 3, order_id=order_id, symbol="XAUUSD"))
                await client.control(step=5)
            reports = await client.order_status(*ids)
            await asyncio.sleep(0.2)
            wire = [(h["Nats-Msg-Id"], getattr(n, "price", None), getattr(n, "retcode", None)) for _, h, n in client.news]
            deals = [(d.deal, d.ticket, d.price, d.volume, d.side, d.position) for r in reports for d in r.deals]
            return (await client.control()).quotes, deals, wire

    runs = []
    for n, seed in enumerate((11, 11, 12)):
        with LocalNats(tmp_path / f"nats-{n}") as url:
            runs.append(asyncio.run(scenario(url, seed)))
    assert runs[0] == runs[1]
    assert runs[0][0] != runs[2][0]
    assert len(runs[0][1]) > 6  # several orders walked the XAUUSD book (2 lots at the touch)


def test_state_survives_a_restart_and_a_resubmitted_order_is_not_executed_again(nats_url, tmp_path):
    state_file = str(tmp_path / "sim-state.json")

    async def scenario() -> None:
        market = order_request(T.BUY, 1.0, sl=1.09000)
        pending = order_request(T.SELL_LIMIT, 1.0, price=1.10200)
        async with running(nats_url, state_file=state_file) as client:
            await client.submit(market, pending)
            await client.until(lambda: fills(client) and client.of(BrokerPlaced))
            before = await client.order_status(market.order_id, pending.order_id)
            positions = await client.positions()
        assert Path(state_file).exists()

        async with running(nats_url, state_file=state_file, ticket_base=1) as client:
            assert await client.order_status(market.order_id, pending.order_id) == before
            assert (await client.positions()).positions == positions.positions
            await client.submit(market, msg_id="resent")
            await client.set_quote("EURUSD", 1.10200, 1.10210)  # the restored limit fills
            await client.until(lambda: len(fills(client)) == 2)
            assert [f.order_id for f in fills(client)] == [market.order_id, pending.order_id]
            # Numbering went on from the state, not from ticket_base.
            assert fills(client)[1].deal > fills(client)[0].deal >= 1000

    asyncio.run(scenario())


def test_an_existing_stream_holding_the_subjects_is_used(nats_url):
    async def scenario() -> None:
        admin = await SimClient.connect(nats_url)
        await admin.js.add_stream(name="SERVICE_ORDERS", subjects=["orders.>"])
        await admin.js.add_stream(name="SERVICE_BROKER", subjects=["broker.>"])
        await admin.close()
        async with running(nats_url) as client:
            await client.submit(order_request(T.BUY, 0.1))
            await client.until(lambda: fills(client))
            names = [info.config.name for info in await client.js.streams_info()]
            assert sorted(names) == ["SERVICE_BROKER", "SERVICE_ORDERS"]
            assert (await client.js.stream_info("SERVICE_BROKER")).state.messages == 1

    asyncio.run(scenario())


def test_prices_move_on_a_timer_and_replay_from_csv(nats_url, tmp_path):
    ticks = tmp_path / "ticks.csv"
    ticks.write_text(
        "time,symbol,bid,ask\n"
        "2025-01-06T12:00:00.0Z,EURUSD,1.10000,1.10010\n"
        "2025-01-06T12:00:00.4Z,EURUSD,1.09940,1.09950\n"
    )

    async def scenario() -> None:
        async with running(nats_url, tick_ms=10) as client:
            first = (await client.control()).quotes
            await asyncio.sleep(0.15)
            assert (await client.control()).quotes != first
        async with running(nats_url, ticks_csv=str(ticks), durable="replay") as client:
            request = order_request(T.BUY_LIMIT, 0.1, price=1.09950)
            await client.submit(request)
            await client.until(lambda: fills(client), timeout=3)
            assert fills(client)[0].price == 1.09950

    asyncio.run(scenario())


def test_python_m_simulator_runs_as_a_process_until_sigterm(nats_url, tmp_path):
    state_file = tmp_path / "state.json"
    env = {**os.environ, "EXEC_NATS_URL": nats_url, "SIM_TICK_MS": "0", "SIM_STATE_FILE": str(state_file)}
    process = subprocess.Popen(
        [sys.executable, "-m", "simulator", "--seed", "5"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )

    async def scenario() -> None:
        client = await SimClient.connect(nats_url)
        deadline = time.monotonic() + 10
        while True:  # until the process is up and has made its streams
            try:
                await client.control()
                break
            except Exception:
                assert time.monotonic() < deadline, "the simulator process did not come up"
                await asyncio.sleep(0.05)
        await client.watch()
        request = order_request(T.BUY, 0.1)
        await client.submit(request)
        await client.until(lambda: fills(client), timeout=5)
        await client.close()

    try:
        asyncio.run(scenario())
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=10)[0].decode()
    assert process.returncode == 0, output
    assert state_file.exists()
    assert "received" in output and "filled" in output and "stopped" in output


def test_the_throughput_run_reports_orders_per_second():
    result = subprocess.run(
        [sys.executable, "-m", "simulator.throughput", "--orders", "200", "--sim-log-level", "WARNING"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "200 market orders" in result.stdout and "orders/s" in result.stdout and "rejected 0" in result.stdout


def test_the_throughput_run_reports_latency_at_a_steady_rate():
    result = subprocess.run(
        [sys.executable, "-m", "simulator.throughput", "--rate", "200", "--orders", "100", "--sim-log-level", "WARNING"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "100 market orders at" in result.stdout and "push consumer" in result.stdout and "p99" in result.stdout
    assert "rejected 0" in result.stdout
