"""Intake never stops, and nothing unsafe reaches the broker: through real NATS, with the
service running as in production and the simulated connector beside it.

Every poison message ends as a dead letter with its reason (and is acknowledged), every
unsafe signal is refused before the broker (no order request is ever published for it),
and a valid signal behind them still becomes its order within seconds.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from harness import RunningSystem, signal, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.supervisor import order_from_signal
from messages import broker as wire
from messages.actor import FailSignal
from messages.codec import decode, encode
from messages.order import order_id_for
from messages.signal import parse_signal
from service.mt5 import order_request
from simulator.control import SetQuote

# Dead letters come within seconds; a valid signal behind poison is filled within these.
SETTLE_S = 15.0
FUZZ_EXAMPLES = int(os.environ.get("EXEC_FUZZ_EXAMPLES", "8"))


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str) -> Iterator[RunningSystem]:
    running = RunningSystem(tmp_path_factory.mktemp("intake"), kafka_bootstrap, reconcile_interval_s=3600, max_symbol_exposure=5.0)
    yield running
    running.close()


def letter_for(system: RunningSystem, **match: Any) -> dict[str, Any]:
    """The dead letter whose fields equal ``match``, waited for."""
    return wait_until(
        lambda: next((d for d in system.dead_letters() if all(d.get(k) == v for k, v in match.items())), None),
        SETTLE_S,
        what=f"a dead letter with {match}",
    )


def letter_of(system: RunningSystem, payload: bytes) -> dict[str, Any]:
    return letter_for(system, payload_sha256=hashlib.sha256(payload).hexdigest())


def submitted(system: RunningSystem, order_id: uuid.UUID) -> bool:
    """Whether an order request for this order ever went to the broker."""
    return "submitted" in system.statuses_on_nats(order_id)


def filled(system: RunningSystem, payload: dict[str, Any]) -> None:
    order_id = system.send(payload)
    assert order_id is not None
    system.wait_status(order_id, "filled", timeout_s=SETTLE_S)


def deep(levels: int) -> bytes:
    return b'{"signal_id":"' + str(uuid.uuid4()).encode() + b'","x":' + b"[" * levels + b"]" * levels + b"}"


POISON: list[tuple[str, bytes, str]] = [
    ("nested 5,000 deep", deep(5000), "malformed_json"),
    ("a number too large", msgspec.json.encode(signal()).replace(b'"entry_price":', b'"entry_price":1e999,"x":'), "invalid_field"),
    ("invalid UTF-8", msgspec.json.encode(signal()).replace(b'"test"', b'"te\xff\xfest"'), "malformed_json"),
    ("a megabyte of padding", msgspec.json.encode({**signal(), "pad": "x" * 1_000_000}), "payload_too_large"),
    ("sig_12345 as signal_id", msgspec.json.encode({**signal(), "signal_id": "sig_12345"}), "invalid_signal_id"),
    ("no approval field", msgspec.json.encode({k: v for k, v in signal().items() if k != "risk_approval_status"}), "not_approved"),
    ("not JSON at all", b"\x00\x01 definitely not a signal", "malformed_json"),
]


def test_poison_is_dead_lettered_and_the_signal_behind_it_still_executes(system: RunningSystem) -> None:
    for _, payload, _ in POISON:
        system.send(payload, "signals.approved.EURUSD")
    filled(system, signal("EURUSD", "buy", 0.1))
    for what, payload, reason in POISON:
        letter = letter_of(system, payload)
        assert letter["reason"] == reason, what
        assert letter["payload_size"] == len(payload) and letter["stream_seq"] > 0
        assert len(msgspec.json.encode(letter)) < 8192, f"{what}: the dead letter is bounded"
        assert letter["payload_truncated"] == (len(payload) > 2048)


def test_a_signal_on_the_bare_subject_is_captured_and_dead_lettered(system: RunningSystem) -> None:
    payload = signal("EURUSD", "buy", 0.1)
    system.send(msgspec.json.encode(payload), "signals.approved")
    letter = letter_for(system, signal_id=payload["signal_id"])
    assert letter["reason"] == "missing_subject_symbol" and letter["subject"] == "signals.approved"
    assert not submitted(system, order_id_for(uuid.UUID(payload["signal_id"])))


def test_an_unforeseen_failure_is_retried_a_bounded_number_of_times(system: RunningSystem) -> None:
    passing, failing = signal("GBPUSD", "buy", 0.1), signal("GBPUSD", "buy", 0.1)
    system.tell("ingress", FailSignal(uuid.UUID(passing["signal_id"]), times=2))
    system.tell("ingress", FailSignal(uuid.UUID(failing["signal_id"]), times=99))
    system.send(failing)
    filled(system, passing)  # failed twice, then went through
    letter = letter_for(system, signal_id=failing["signal_id"])
    assert letter["reason"] == "internal_error" and "injected failure" in letter["detail"]
    assert letter["deliveries"] == 3
    filled(system, signal("GBPUSD", "sell", 0.1))


def test_a_signal_that_comes_again_with_its_order_out_is_taken_as_the_broker_has_it(system: RunningSystem) -> None:
    """A tree that sent an order and died before recording anything of it leaves the signal to
    come again, maybe when the market checks would refuse it: the order the broker has is
    recorded as the broker has it, not refused, and not sent a second time."""
    system.control(set_quote=SetQuote(symbol="USDJPY", bid=151.490, ask=151.500))
    payload = signal("USDJPY", "buy", 0.2, 151.5)
    signal_id = uuid.UUID(payload["signal_id"])
    order = order_from_signal(parse_signal(msgspec.json.encode(payload)), system.settings)
    request = order_request(order, system.settings, "the tree that died", datetime.now(UTC))
    system.probe.publish("orders.submitted.USDJPY", encode(request), {"Nats-Msg-Id": str(order.order_id)})

    def at_broker() -> wire.BrokerOrderReport | None:
        reply = system.probe.request(wire.ORDER_STATUS_SUBJECT, encode(wire.OrderStatusQuery(order_ids=[order.order_id])))
        report = decode(reply, wire.OrderStatusReport).orders[0]
        return report if report.state is wire.BrokerOrderState.FILLED else None

    report = wait_until(at_broker, SETTLE_S, 0.2, "the broker to fill the dead tree's order")
    system.control(set_quote=SetQuote(symbol="USDJPY", bid=160.490, ask=160.500))  # the entry is out of the band now
    try:
        system.tell("ingress", FailSignal(signal_id, times=1))  # its first delivery died with the tree
        system.send(payload)
        row = system.wait_status(order.order_id, "filled", timeout_s=SETTLE_S)
    finally:
        system.control(set_quote=SetQuote(symbol="USDJPY", bid=151.490, ask=151.500))  # (for the tests after)
    assert row["filled_quantity"] == pytest.approx(0.2) and row["signal_id"] == signal_id
    fills = system.query("SELECT deal, slippage_pips FROM suho_analytics.executions WHERE order_id = {id:UUID}", id=order.order_id)
    assert sorted(deal for deal, _ in fills) == sorted(deal.deal for deal in report.deals)
    assert all(slippage is not None for _, slippage in fills)
    assert system.statuses_on_nats(order.order_id).count("submitted") == 1
    assert not [d for d in system.dead_letters() if d["signal_id"] == payload["signal_id"]]


@pytest.mark.parametrize(
    ("what", "fields", "reason"),
    [
        ("close_long of -5 lots", {"signal_type": "close_long", "position_size_recommended": -5}, "non_positive_volume"),
        ("close_short of 1e9 lots", {"signal_type": "close_short", "position_size_recommended": 1e9}, "order_volume_limit"),
        ("entry price 1e300", {"entry_price": 1e300}, "price_out_of_band"),
        ("a buy's stop-loss above the price", {"stop_loss": 1.0900}, "invalid_stops"),
        ("a buy's take-profit below the price", {"take_profit": 1.0800}, "invalid_stops"),
        ("a limit far from the market", {"order_type": "limit", "limit_price": 0.95}, "price_out_of_band"),
        ("GTD that expired", {"order_type": "limit", "limit_price": 1.08, "time_in_force": "GTD", "expires_in_s": -3600}, "expiry_in_past"),
        ("GTD expiring in 5 s", {"order_type": "limit", "limit_price": 1.08, "time_in_force": "GTD", "expires_in_s": 5}, "expiry_too_close"),
        ("more lots than one order may have", {"position_size_recommended": 25.0}, "order_volume_limit"),
        ("pending approval", {"risk_approval_status": "pending"}, "not_approved"),
    ],
)  # fmt: skip
def test_an_unsafe_signal_is_refused_before_the_broker(system: RunningSystem, what: str, fields: dict[str, Any], reason: str) -> None:
    system.control(set_quote=SetQuote(symbol="EURUSD", bid=1.08490, ask=1.08500))
    payload = {**signal("EURUSD", "buy", 0.1, 1.085), **fields}
    if (expires_in_s := payload.pop("expires_in_s", None)) is not None:
        payload["expires_at"] = (datetime.now(UTC) + timedelta(seconds=expires_in_s)).isoformat()
    order_id = system.send(payload)
    assert order_id is not None
    letter = letter_for(system, signal_id=payload["signal_id"])
    assert letter["reason"] == reason, what
    assert system.order_row(order_id) is None and not submitted(system, order_id)


def test_a_close_takes_what_is_asked_and_never_more_than_is_open(system: RunningSystem) -> None:
    system.control(set_quote=SetQuote(symbol="USDCHF", bid=0.88490, ask=0.88500))
    filled(system, signal("USDCHF", "buy", 0.3, 0.885))
    too_much = signal("USDCHF", "close_long", 0.5, 0.8849)
    system.send(too_much)
    assert letter_for(system, signal_id=too_much["signal_id"])["reason"] == "close_exceeds_position"
    partial = signal("USDCHF", "close_long", 0.1, 0.8849)
    filled(system, partial)
    rest = {**signal("USDCHF", "close_long", 0.1, 0.8849), "position_size_recommended": None}
    order_id = system.send(rest)
    assert order_id is not None
    row = system.wait_status(order_id, "filled")
    assert row["quantity"] == pytest.approx(0.2)  # no volume: all that was left
    wait_until(lambda: not [p for p in system.positions().positions if p.symbol == "USDCHF" and p.quantity > 0], what="flat")
    nothing = signal("USDCHF", "close_long", 0.1, 0.8849)
    system.send(nothing)
    assert letter_for(system, signal_id=nothing["signal_id"])["reason"] == "no_open_position"


def test_the_per_symbol_exposure_limit_counts_positions_and_working_orders(system: RunningSystem) -> None:
    system.control(set_quote=SetQuote(symbol="AUDUSD", bid=0.65490, ask=0.65500))
    filled(system, signal("AUDUSD", "buy", 3.0, 0.655))
    resting = signal("AUDUSD", "buy", 1.5, 0.650, order_type="limit", limit_price=0.650)
    resting_id = system.send(resting)
    assert resting_id is not None
    system.wait_status(resting_id, "submitted")
    over = signal("AUDUSD", "sell", 1.0, 0.6549)  # 3 + 1.5 + 1 > 5 lots
    system.send(over)
    letter = letter_for(system, signal_id=over["signal_id"])
    assert letter["reason"] == "exposure_limit" and "limit is 5.0" in letter["detail"]
    filled(system, signal("AUDUSD", "sell", 0.5, 0.6549))  # exactly 5


def test_a_replay_is_silent_and_a_conflicting_one_is_refused_with_an_alert(system: RunningSystem) -> None:
    original = signal("EURJPY", "buy", 0.1, 163.8)
    filled(system, original)
    system.send(original)
    conflicting = {**original, "position_size_recommended": 0.2}
    system.send(conflicting)
    letter = letter_for(system, signal_id=original["signal_id"])
    assert letter["reason"] == "duplicate_conflict"
    alerts = wait_until(lambda: [msgspec.json.decode(d) for _, d in system.probe.seen["signals.alert"]], what="an alert")
    assert alerts[-1]["kind"] == "duplicate_conflict" and alerts[-1]["signal_id"] == original["signal_id"]
    order_id = order_id_for(uuid.UUID(original["signal_id"]))
    assert system.statuses_on_nats(order_id).count("submitted") == 1
    assert [d for d in system.dead_letters() if d["signal_id"] == original["signal_id"]] == [letter]  # the replay: no letter


def test_a_restart_with_poison_at_the_head_of_the_stream(system: RunningSystem) -> None:
    system.stop_service()
    poison = deep(10_000)
    system.send(poison, "signals.approved.EURUSD")
    behind = signal("EURUSD", "sell", 0.1)
    system.send(behind)
    system.start_service()
    assert letter_of(system, poison)["reason"] == "malformed_json"
    order_id = order_id_for(uuid.UUID(behind["signal_id"]))
    system.wait_status(order_id, "filled", timeout_s=SETTLE_S)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=16),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=16,
)
FIELDS = ["signal_id", "symbol", "signal_type", "position_size_recommended", "entry_price", "stop_loss", "take_profit",
          "risk_approval_status", "order_type", "limit_price", "time_in_force", "expires_at", "signal_timestamp"]  # fmt: skip
GARBAGE = st.one_of(
    st.binary(max_size=256),
    JSON.map(msgspec.json.encode),
    st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=6).map(lambda fields: msgspec.json.encode({**signal(), **fields})),
)


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(GARBAGE, min_size=1, max_size=12))
def test_fuzz_whatever_arrives_a_valid_signal_still_becomes_its_order(system: RunningSystem, batch: list[bytes]) -> None:
    for payload in batch:
        system.send(payload, "signals.approved.EURUSD")
    filled(system, signal("USDJPY", "buy", 0.01))  # another symbol: a valid signal in the garbage may use EURUSD's exposure


def test_a_message_jetstream_gives_up_on_becomes_a_dead_letter(tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str) -> None:
    # JetStream's max_deliver below the bound on internal errors: JetStream gives up first.
    system = RunningSystem(tmp_path_factory.mktemp("max-deliver"), kafka_bootstrap, signal_max_deliver=2)
    try:
        stuck = signal("EURUSD", "buy", 0.1)
        system.tell("ingress", FailSignal(uuid.UUID(stuck["signal_id"]), times=99))
        payload = msgspec.json.encode(stuck)
        system.send(payload, "signals.approved.EURUSD")
        letter = letter_of(system, payload)
        assert letter["reason"] == "max_deliveries" and letter["deliveries"] == 2
        filled(system, signal("EURUSD", "buy", 0.1))
    finally:
        system.close()
