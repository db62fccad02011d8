"""The mt5-connector contract, pinned in golden fixtures (tests/golden/*.json), checked from both sides.

What the service sends (order, modify and cancel requests) is built by service/mt5.py and must
equal its fixture byte for byte as JSON; the simulated connector must read those same fixtures
and answer with messages equal to theirs (fill, placement, refusal, cancellation, status
report, request result); and the service must read those answers as the model's reports. A
change to either side, or to messages/broker.py, fails here until the fixture is regenerated
on purpose: ``EXEC_GOLDEN_WRITE=1 pytest tests/test_golden_wire.py`` (then read the diff).
"""

from __future__ import annotations

import json
import os
import random
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

from messages import broker as wire
from messages.actor import BrokerNews, ModifyResult
from messages.codec import decode, encode
from messages.enums import DealEntry, DealReason, OrderStatus, OrderType, Phase, Retcode, Side, TimeInForce
from messages.order import Fill, Order, OrderChange, execution_id_for, order_id_for
from messages.symbols import SYMBOLS
from model import order as model
from service import mt5
from service.config import Settings
from simulator.book import Book, BrokerConfig
from simulator.market import Market

GOLDEN = Path(__file__).parent / "golden"
WRITE = os.environ.get("EXEC_GOLDEN_WRITE") == "1"
NOW = datetime(2026, 12, 1, 9, 30, 0, 250000, tzinfo=UTC)
ACTOR = "ActorAddr-127.0.0.1:1950-7"


def golden(name: str, message: msgspec.Struct) -> bytes:
    """The fixture ``name``: compared with ``message`` (or written from it under EXEC_GOLDEN_WRITE)."""
    path = GOLDEN / f"{name}.json"
    actual = json.loads(encode(message))
    if WRITE:
        path.write_text(json.dumps(actual, indent=2) + "\n")
    expected = json.loads(path.read_text())
    assert actual == expected, f"{name}: the wire message changed; regenerate the fixture if that is intended"
    return path.read_bytes()


def fixture(name: str) -> bytes:
    return (GOLDEN / f"{name}.json").read_bytes()


def order(order_type: OrderType, side: Side, signal: str, **fields: Any) -> Order:
    signal_id = uuid.UUID(signal)
    values: dict[str, Any] = dict(
        order_id=order_id_for(signal_id), signal_id=signal_id, symbol="EURUSD", side=side, order_type=order_type,
        quantity=0.5, expected_price=1.10010, created_at=NOW, phase=Phase.SENT, status=OrderStatus.SUBMITTED,
        version=2, submitted_at=NOW, timeframe="H1",
    )  # fmt: skip
    return Order(**{**values, **fields})


MARKET = order(OrderType.MARKET, Side.BUY, "0b5c7a52-2f4e-4a43-9a77-3b1f4f4c2a10", stop_loss=1.09500, take_profit=1.10800)
LIMIT = order(
    OrderType.LIMIT, Side.SELL, "0b5c7a52-2f4e-4a43-9a77-3b1f4f4c2a11", price=1.10300,
    time_in_force=TimeInForce.GTD, expires_at=NOW + timedelta(hours=4),
)  # fmt: skip
BAD_VOLUME = order(OrderType.MARKET, Side.BUY, "0b5c7a52-2f4e-4a43-9a77-3b1f4f4c2a12", quantity=0.015)  # not a multiple of the lot step


def book() -> Book:
    market = Market(SYMBOLS, random.Random(1), depth_step_points=2)
    market.set_quote("EURUSD", 1.10000, 1.10010)
    return Book(market, BrokerConfig(ticket_base=5000))


def request_bytes(o: Order, name: str) -> bytes:
    return golden(name, mt5.order_request(o, Settings(), ACTOR, NOW))


# --- the service's side: what it sends ------------------------------------------------------------


def test_the_service_builds_the_order_requests_of_the_fixtures() -> None:
    request_bytes(MARKET, "order_request_market")
    request_bytes(LIMIT, "order_request_limit")
    request_bytes(BAD_VOLUME, "order_request_invalid_volume")


def test_the_service_builds_the_modify_and_cancel_requests_of_the_fixtures() -> None:
    change = OrderChange(request_id=uuid.UUID("9d0c5cbe-0000-4000-8000-000000000001"), price=1.10250, tp=0)
    golden("modify_request", mt5.modify_request(LIMIT, change))
    golden("cancel_request", wire.CancelRequest(order_id=LIMIT.order_id))


# --- the connector's side: it reads the service's fixtures and answers with its own -------------


def test_the_simulator_fills_the_market_request_with_the_fill_of_the_fixture() -> None:
    events, _ = book().submit(decode(fixture("order_request_market"), wire.OrderRequest), NOW)
    [fill] = events
    golden("broker_fill", fill)


def test_the_simulator_places_the_limit_request_then_cancels_it_as_the_fixtures_say() -> None:
    broker = book()
    request = decode(fixture("order_request_limit"), wire.OrderRequest)
    [placed], _ = broker.submit(request, NOW)
    golden("broker_placed", placed)
    golden("order_status_report", broker.order_status([request.order_id]))
    modified = broker.modify(decode(fixture("modify_request"), wire.ModifyRequest), NOW)
    golden("modify_result", modified)
    result, [cancelled] = broker.cancel(decode(fixture("cancel_request"), wire.CancelRequest).order_id, NOW)
    golden("cancel_result", result)
    golden("broker_cancelled", cancelled)


def test_the_simulator_refuses_a_volume_off_the_lot_step_as_the_fixture_says() -> None:
    [refused], _ = book().submit(decode(fixture("order_request_invalid_volume"), wire.OrderRequest), NOW)
    golden("broker_error", refused)


# --- and the service reads the connector's fixtures as the model's reports ----------------------


def read(name: str, kind: type[msgspec.Struct]) -> model.BrokerReport:
    news: BrokerNews = decode(fixture(name), kind)  # type: ignore[assignment]
    return mt5.report_of(news)


def test_the_service_reads_the_connectors_fixtures_as_the_models_reports() -> None:
    fill = decode(fixture("broker_fill"), wire.BrokerFill)
    assert read("broker_fill", wire.BrokerFill) == model.Dealt(
        Fill(
            execution_id=execution_id_for(fill.deal), order_id=MARKET.order_id, deal=fill.deal, ticket=fill.ticket,
            position_ticket=fill.position, symbol="EURUSD", side=Side.BUY, fill_price=1.1001, fill_quantity=0.5,
            expected_price=None, slippage=None, slippage_pips=None, commission=fill.commission, swap=0.0,
            entry=DealEntry.IN, reason=DealReason.CLIENT, execution_timestamp=NOW,
        )
    )  # fmt: skip
    placed = decode(fixture("broker_placed"), wire.BrokerPlaced)
    assert read("broker_placed", wire.BrokerPlaced) == model.Placed(placed.ticket)
    assert read("broker_error", wire.BrokerError) == model.Refused(Retcode.INVALID_VOLUME, decode(fixture("broker_error"), wire.BrokerError).comment)
    assert read("broker_cancelled", wire.BrokerCancelled) == model.Ended(model.EndCause.CANCELLED, 0.5)
    [report] = decode(fixture("order_status_report"), wire.OrderStatusReport).orders
    assert mt5.report_of(report) == model.Status(model.BrokerState.WORKING, placed.ticket, (), Retcode.PLACED, report.comment)
    modify = decode(fixture("modify_result"), wire.RequestResult)
    assert mt5.report_of(ModifyResult(modify)) == model.ModifyAnswered(Retcode.DONE, modify.comment)
    assert read("cancel_result", wire.RequestResult) == model.CancelAnswered(True, Retcode.DONE, decode(fixture("cancel_result"), wire.RequestResult).comment)


def test_the_model_ends_each_order_of_the_fixtures_where_the_broker_said() -> None:
    policy = model.Policy(Settings().limits)
    filled = model.decide(MARKET, read("broker_fill", wire.BrokerFill), NOW, policy).order
    assert (filled.status, filled.filled_quantity, filled.average_fill_price) == (OrderStatus.FILLED, 0.5, 1.1001)
    resting = model.decide(LIMIT, read("broker_placed", wire.BrokerPlaced), NOW, policy).order
    assert model.is_resting(resting)
    cancelled = model.decide(resting, read("broker_cancelled", wire.BrokerCancelled), NOW, policy).order
    assert cancelled.status is OrderStatus.CANCELLED
    rejected = model.decide(BAD_VOLUME, read("broker_error", wire.BrokerError), NOW, policy).order
    assert rejected.status is OrderStatus.REJECTED and (rejected.rejection_reason or "").startswith("10014")
