"""The order model alone (model/order.py): every transition and the real world's edges, with
hand-made broker reports and an injected clock. No I/O; the whole file runs in well under a second."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from messages.enums import DealEntry, DealReason, OrderStatus, OrderType, Phase, Retcode, Side
from messages.order import EventKind as E
from messages.order import Fill, Order, OrderChange, execution_id_for, order_id_for
from messages.symbols import SYMBOLS
from model import order as model
from service.config import Settings
from model.order import (
    AskBroker,
    ArmTimer,
    BrokerState,
    Cancel,
    CancelAnswered,
    Dealt,
    Ended,
    EndCause,
    FetchQuote,
    Modify,
    ModifyAnswered,
    Placed,
    Policy,
    QuoteArrived,
    RecordStrayFill,
    Refused,
    SendCancel,
    SendModify,
    SendOrder,
    Status,
    Take,
    TimerFired,
    Triggered,
    Unknown,
)

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
POLICY = Policy(Settings().limits, broker_timeout=timedelta(seconds=5), request_timeout=timedelta(seconds=2))


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def tick(self, seconds: float = 1.0) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


def new_order(order_type: OrderType = OrderType.MARKET, quantity: float = 1.0, side: Side = Side.BUY, **fields: object) -> Order:
    signal_id = uuid.uuid4()
    prices: dict[str, object] = {
        OrderType.MARKET: {},
        OrderType.LIMIT: {"price": 1.08400},
        OrderType.STOP: {"stop_price": 1.08600},
        OrderType.STOP_LIMIT: {"stop_price": 1.08600, "price": 1.08650},
    }[order_type]
    return Order(
        order_id=order_id_for(signal_id), signal_id=signal_id, symbol="EURUSD", side=side, order_type=order_type,
        quantity=quantity, expected_price=1.08500, created_at=T0, **{**prices, **fields},
    )  # fmt: skip


def fill(order: Order, deal: int, volume: float, price: float = 1.08503) -> Fill:
    return Fill(
        execution_id=execution_id_for(deal), order_id=order.order_id, deal=deal, ticket=9001, position_ticket=7001,
        symbol=order.symbol, side=order.side, fill_price=price, fill_quantity=volume, expected_price=None,
        slippage=None, slippage_pips=None, commission=-0.35, swap=0.0, entry=DealEntry.IN, reason=DealReason.CLIENT,
        execution_timestamp=T0,
    )  # fmt: skip


class Run:
    """An order driven through the model, input by input, as an actor would."""

    def __init__(self, order: Order) -> None:
        self.order = order
        self.clock = Clock()
        self.history: list[model.OrderEvent] = []
        self.last = model.Decision(order)

    def __call__(self, given: model.Input) -> model.Decision:
        self.last = model.decide(self.order, given, self.clock.tick(), POLICY, "Actor-1")
        self.order = self.last.order
        self.history.extend(self.last.events)
        return self.last

    @property
    def kinds(self) -> list[E]:
        return [e.kind for e in self.last.events]

    def effects(self, kind: type) -> list[object]:
        return [e for e in self.last.effects if isinstance(e, kind)]


def sent(order_type: OrderType = OrderType.MARKET, quantity: float = 1.0, **fields: object) -> Run:
    run = Run(new_order(order_type, quantity, **fields))
    run(Take())
    return run


def working(order_type: OrderType = OrderType.LIMIT, quantity: float = 1.0) -> Run:
    run = sent(order_type, quantity)
    run(Placed(555))
    return run


# --- the happy paths ---------------------------------------------------------------------------------


def test_a_new_order_is_created_and_sent_with_a_timer_on_its_answer() -> None:
    run = Run(new_order())
    decision = run(Take())
    assert run.kinds == [E.CREATED, E.SUBMITTED]
    assert (run.order.phase, run.order.status, run.order.version) == (Phase.SENT, OrderStatus.SUBMITTED, 2)
    assert run.effects(SendOrder) == [SendOrder()]
    assert run.effects(ArmTimer) == [ArmTimer(timedelta(seconds=5), 2, 0)]
    assert [e.seq for e in decision.events] == [1, 2] and decision.events[-1].event_id == f"{run.order.order_id}:2"
    assert run.order.submitted_at == run.clock.now and run.order.actor_address == "Actor-1"


def test_partial_fills_add_up_exactly_to_a_filled_order_at_the_volume_weighted_price() -> None:
    run = sent(quantity=0.3)
    run(Dealt(fill(run.order, 1, 0.1, 1.08503)))
    assert (run.kinds, run.order.status, run.order.phase) == ([E.PARTIAL_FILL], OrderStatus.PARTIALLY_FILLED, Phase.SENT)
    run(Dealt(fill(run.order, 2, 0.2, 1.08506)))
    # 0.1 + 0.2 in floats is 0.30000000000000004; in lot steps it is 30, the order's quantity.
    assert (run.kinds, run.order.status, run.order.filled_quantity) == ([E.FILL], OrderStatus.FILLED, 0.3)
    assert run.order.average_fill_price == 1.08505 and run.order.commission == -0.7
    assert run.order.deals == (1, 2) and run.order.filled_at == T0
    assert not model.needs_actor(run.order) and run.effects(ArmTimer) == []


def test_each_fill_carries_its_slippage_signed_adverse_positive() -> None:
    buy = sent()
    buy(Dealt(fill(buy.order, 1, 1.0, 1.08503)))
    assert (buy.last.events[0].fill.slippage_pips, buy.last.events[0].fill.slippage) == (0.3, 0.00003)  # 3 points, 0.3 pips
    sell = sent(side=Side.SELL)
    sell(Dealt(fill(sell.order, 2, 1.0, 1.08503)))
    assert sell.last.events[0].fill.slippage_pips == -0.3  # a sell above the expected price gained


def test_the_average_price_is_exact_between_two_points() -> None:
    run = sent(quantity=0.02)
    run(Dealt(fill(run.order, 1, 0.01, 1.08501)))
    run(Dealt(fill(run.order, 2, 0.01, 1.08502)))
    assert run.order.average_fill_price == 1.085015


def test_a_limit_order_rests_at_the_broker_and_no_actor_needs_to_hold_it() -> None:
    run = sent(OrderType.LIMIT)
    run(Placed(555))
    assert (run.kinds, run.order.phase, run.order.status, run.order.broker_order_id) == ([E.PLACED], Phase.WORKING, OrderStatus.SUBMITTED, "555")
    assert model.is_resting(run.order) and not model.needs_actor(run.order) and run.effects(ArmTimer) == []


def test_a_stop_limit_is_triggered_then_filled() -> None:
    run = working(OrderType.STOP_LIMIT)
    run(Triggered())
    assert (run.kinds, run.order.phase, run.order.triggered_at) == ([E.TRIGGERED], Phase.TRIGGERED, run.clock.now)
    run(Dealt(fill(run.order, 1, 1.0, 1.08650)))
    assert run.order.phase is Phase.FILLED


def test_a_status_report_says_when_a_stop_limit_was_triggered() -> None:
    run = working(OrderType.STOP_LIMIT)
    run(Status(BrokerState.TRIGGERED, 555))
    assert run.kinds == [E.TRIGGERED] and model.is_resting(run.order)


def test_the_unfilled_rest_of_an_ioc_order_is_cancelled_and_the_fills_stand() -> None:
    run = sent(quantity=2.0)
    run(Dealt(fill(run.order, 1, 1.5)))
    run(Ended(EndCause.UNFILLED, 0.5))
    assert (run.kinds, run.order.status, run.order.filled_quantity) == ([E.CANCELLED], OrderStatus.CANCELLED, 1.5)
    assert run.order.cancelled_at == run.clock.now


def test_an_expired_order_is_cancelled_publicly_and_expired_in_its_phase() -> None:
    run = working()
    run(Ended(EndCause.EXPIRED, 1.0))
    assert (run.kinds, run.order.phase, run.order.status) == ([E.EXPIRED], Phase.EXPIRED, OrderStatus.CANCELLED)


def test_a_refused_order_is_rejected_with_the_retcode() -> None:
    run = sent()
    run(Refused(Retcode.NO_MONEY, "No money"))
    assert (run.kinds, run.order.status, run.order.rejection_reason) == ([E.REJECTED], OrderStatus.REJECTED, "10019 No money")


def test_a_close_without_a_named_position_is_rejected_before_it_goes_out() -> None:
    run = Run(new_order(closes_position=True))
    run(Take())
    assert (run.kinds, run.order.status) == ([E.CREATED, E.REJECTED], OrderStatus.REJECTED) and run.effects(SendOrder) == []


# --- outcome unknown: query, never assume rejected ---------------------------------------------


@pytest.mark.parametrize("retcode", [Retcode.TIMEOUT, Retcode.CONNECTION])
def test_a_timeout_or_lost_connection_is_an_unknown_outcome_that_is_asked_about(retcode: int) -> None:
    run = sent()
    run(Refused(retcode, "Request timeout"))
    assert (run.kinds, run.order.phase, run.order.status) == ([E.OUTCOME_UNKNOWN], Phase.OUTCOME_UNKNOWN, OrderStatus.SUBMITTED)
    assert run.effects(AskBroker) == [AskBroker()] and run.effects(ArmTimer)
    assert run.order.rejection_reason is None


def test_an_unknown_outcome_that_was_executed_ends_filled_from_the_status_report() -> None:
    run = sent()
    run(Unknown(Retcode.TIMEOUT, "Request timeout"))
    run(Status(BrokerState.FILLED, 9001, (fill(run.order, 1, 1.0),)))
    assert run.kinds == [E.QUERIED, E.FILL] and run.order.status is OrderStatus.FILLED


def test_an_unknown_outcome_the_broker_never_shows_fails_after_the_reports_without_a_resend() -> None:
    run = sent()
    run(Unknown(Retcode.CONNECTION, "No connection"))
    for count in (1, 2):
        run(Status(BrokerState.NOT_FOUND))
        assert run.kinds == [E.NOT_AT_BROKER] and run.order.not_found == count
        assert run.effects(SendOrder) == []  # it may still appear: asked, never sent again
    run(Status(BrokerState.NOT_FOUND))
    assert (run.kinds, run.order.status, run.order.error_message) == ([E.FAILED], OrderStatus.FAILED, "unknown at broker")


def test_an_order_the_broker_never_received_is_sent_again_then_failed() -> None:
    run = sent()
    run(Status(BrokerState.NOT_FOUND))
    assert run.kinds == [E.NOT_AT_BROKER] and run.effects(SendOrder) == [SendOrder()]
    run(Status(BrokerState.NOT_FOUND))
    run(Status(BrokerState.NOT_FOUND))
    assert run.order.status is OrderStatus.FAILED


def test_a_report_that_knows_the_order_resets_the_not_found_count() -> None:
    run = sent(OrderType.LIMIT)
    run(Status(BrokerState.NOT_FOUND))
    run(Status(BrokerState.WORKING, 555))
    assert (run.kinds, run.order.not_found, run.order.phase) == ([E.PLACED], 0, Phase.WORKING)


# --- real-world edges ------------------------------------------------------------------------------


def test_a_fill_for_an_order_declared_failed_is_applied_the_broker_executed_it() -> None:
    run = sent()
    for _ in range(3):
        run(Status(BrokerState.NOT_FOUND))
    assert run.order.status is OrderStatus.FAILED
    run(Dealt(fill(run.order, 1, 1.0)))
    assert (run.kinds, run.order.status, run.order.filled_quantity) == ([E.FILL], OrderStatus.FILLED, 1.0)
    assert any("declared failed" in note for note in run.last.notes)


def test_a_partial_fill_for_a_failed_order_brings_it_back_and_asks_for_the_rest() -> None:
    run = sent()
    for _ in range(3):
        run(Status(BrokerState.NOT_FOUND))
    run(Dealt(fill(run.order, 1, 0.4)))
    assert (run.order.phase, run.order.status) == (Phase.SENT, OrderStatus.PARTIALLY_FILLED)
    assert run.effects(ArmTimer) and model.needs_actor(run.order)


def test_a_fill_after_a_cancel_request_is_applied() -> None:
    run = working()
    run(Cancel("operator"))
    assert (run.kinds, run.order.phase, run.effects(SendCancel)) == ([E.CANCEL_REQUESTED], Phase.PENDING_CANCEL, [SendCancel()])
    run(Dealt(fill(run.order, 1, 0.4)))
    assert (run.order.phase, run.order.status) == (Phase.PENDING_CANCEL, OrderStatus.PARTIALLY_FILLED)
    run(Ended(EndCause.CANCELLED, 0.6))
    assert (run.order.status, run.order.filled_quantity) == (OrderStatus.CANCELLED, 0.4)


def test_a_cancel_that_fails_leaves_the_order_working() -> None:
    run = working(OrderType.STOP_LIMIT)
    run(Triggered())
    run(Cancel("operator"))
    run(CancelAnswered(False, Retcode.INVALID, "Invalid request"))
    assert (run.kinds, run.order.phase) == ([E.CANCEL_REFUSED], Phase.TRIGGERED)
    assert model.is_resting(run.order)


def test_a_cancel_accepted_waits_for_the_brokers_cancelled_message() -> None:
    run = working()
    run(Cancel("operator"))
    run(CancelAnswered(True, Retcode.DONE, "Request completed"))
    assert run.kinds == [] and run.order.phase is Phase.PENDING_CANCEL


def test_a_report_that_still_shows_a_cancelled_order_working_sends_the_cancel_again() -> None:
    run = working()
    run(Cancel("operator"))
    run(Status(BrokerState.WORKING, 555))
    assert run.effects(SendCancel) == [SendCancel()]


def test_a_cancel_for_an_order_not_sent_yet_cancels_it_here() -> None:
    run = Run(new_order())
    run.order = run.order  # version 0: not even created
    created = model.decide(run.order, Take(reconcile=True), T0, POLICY)  # revived before anything was recorded
    run.order = created.order
    run(Cancel("halt"))
    assert (run.kinds, run.order.status) == ([E.CANCELLED], OrderStatus.CANCELLED)


def test_a_duplicate_deal_is_recognised_and_not_counted_twice() -> None:
    run = sent(quantity=2.0)
    deal = fill(run.order, 1, 1.0)
    run(Dealt(deal))
    run(Dealt(deal))
    assert run.kinds == [] and run.order.filled_quantity == 1.0 and run.last.notes == ["duplicate deal 1 ignored"]


def test_a_deal_beyond_the_orders_volume_is_recorded_for_the_positions_only() -> None:
    run = sent()
    run(Dealt(fill(run.order, 1, 1.0)))
    run(Dealt(fill(run.order, 2, 0.5)))
    assert run.kinds == [] and [type(e) for e in run.last.effects] == [RecordStrayFill]
    assert run.order.filled_quantity == 1.0


def test_a_late_fill_for_a_cancelled_order_keeps_it_cancelled_with_the_fill() -> None:
    run = working()
    run(Ended(EndCause.CANCELLED, 1.0))
    run(Dealt(fill(run.order, 1, 0.3)))
    assert (run.order.status, run.order.filled_quantity) == (OrderStatus.CANCELLED, 0.3)


def test_a_cancelled_message_telling_of_more_fills_than_we_know_asks_for_them_first() -> None:
    run = sent(quantity=2.0)
    run(Ended(EndCause.UNFILLED, 0.5))  # 1.5 filled at the broker, none heard of here
    assert run.kinds == [] and run.effects(AskBroker) == [AskBroker()] and run.effects(ArmTimer)


def test_a_placement_for_an_order_already_ended_is_ignored() -> None:
    run = sent(OrderType.LIMIT)
    run(Refused(Retcode.INVALID_PRICE, "Invalid price"))
    run(Placed(555))
    assert run.kinds == [] and run.order.status is OrderStatus.REJECTED


def test_a_working_order_the_broker_refuses_when_it_triggers_ends_rejected() -> None:
    run = working(OrderType.STOP)
    run(Refused(Retcode.NO_MONEY, "No money"))
    assert run.kinds == [] and run.effects(AskBroker) == [AskBroker()]  # its status tells
    run(Status(BrokerState.REJECTED, 555, (), Retcode.NO_MONEY, "No money"))
    assert (run.kinds, run.order.status, run.order.rejection_reason) == ([E.QUERIED, E.REJECTED], OrderStatus.REJECTED, "10019 No money")


def test_a_partly_filled_working_order_the_broker_refuses_keeps_its_fills_and_ends_cancelled() -> None:
    run = working()
    run(Dealt(fill(run.order, 1, 0.4)))
    run(Status(BrokerState.REJECTED, 555, (fill(run.order, 1, 0.4),), Retcode.NO_MONEY, "No money"))
    assert (run.order.status, run.order.filled_quantity) == (OrderStatus.CANCELLED, 0.4)


def test_a_lost_cancel_of_a_partly_filled_resting_order_goes_again() -> None:
    run = working()
    run(Dealt(fill(run.order, 1, 0.4)))
    run(Cancel("operator"))
    run(Status(BrokerState.PARTIALLY_FILLED, 555, (fill(run.order, 1, 0.4),)))
    assert run.effects(SendCancel) == [SendCancel()]


def test_a_limit_order_reported_partly_filled_before_its_placement_was_heard_rests() -> None:
    run = sent(OrderType.LIMIT)
    run(Status(BrokerState.PARTIALLY_FILLED, 555, (fill(run.order, 1, 0.4),)))
    assert run.order.phase is Phase.WORKING and model.is_resting(run.order)


@pytest.mark.parametrize("retcode", [Retcode.TIMEOUT, Retcode.CONNECTION])
def test_a_cancel_answered_with_an_unknown_outcome_is_asked_about_not_taken_as_refused(retcode: int) -> None:
    run = working()
    run(Cancel("operator"))
    run(CancelAnswered(False, retcode, "Request timeout"))
    assert run.kinds == [] and run.order.phase is Phase.PENDING_CANCEL and run.effects(AskBroker) == [AskBroker()]


def test_an_order_declared_failed_that_the_broker_places_after_all_is_tracked_again() -> None:
    run = sent(OrderType.LIMIT)
    for _ in range(3):
        run(Status(BrokerState.NOT_FOUND))
    run(Placed(555))
    assert (run.order.phase, run.order.status) == (Phase.WORKING, OrderStatus.SUBMITTED) and model.is_resting(run.order)


def test_an_order_declared_failed_that_the_broker_refuses_after_all_is_rejected() -> None:
    """A request held up by a NATS restart reaches the broker after three reports that it does
    not know it: the broker's refusal is the order's end, not ours."""
    run = sent()
    for _ in range(3):
        run(Status(BrokerState.NOT_FOUND))
    assert run.order.phase is Phase.FAILED
    run(Refused(Retcode.REQUOTE, "Requote"))
    assert (run.order.phase, run.order.status) == (Phase.REJECTED, OrderStatus.REJECTED)
    assert run.order.rejection_reason == f"{Retcode.REQUOTE} Requote"


def test_a_partly_filled_order_a_report_does_not_know_is_neither_sent_again_nor_failed() -> None:
    run = sent(quantity=1.0)
    run(Dealt(fill(run.order, 1, 0.4)))
    for _ in range(3):
        run(Status(BrokerState.NOT_FOUND))
        assert run.kinds == [] and run.effects(SendOrder) == []
    assert run.order.status is OrderStatus.PARTIALLY_FILLED


def test_a_cancelled_order_the_broker_never_received_fails_after_the_reports_without_a_resend() -> None:
    run = sent()
    run(Cancel("halt"))
    for _ in range(2):
        run(Status(BrokerState.NOT_FOUND))
        assert run.kinds == [E.NOT_AT_BROKER] and run.effects(SendOrder) == []
    run(Status(BrokerState.NOT_FOUND))
    assert run.order.status is OrderStatus.FAILED


def test_the_average_price_stays_exact_over_many_fills() -> None:
    run = sent(quantity=0.04)
    for number, price in enumerate((1.08501, 1.08502, 1.08502, 1.08502), start=1):
        run(Dealt(fill(run.order, number, 0.01, price)))
    assert run.order.average_fill_price == 1.0850175  # 434007 points / 4, exactly


# --- revival: nothing lives outside the order ----------------------------------------------------


def test_a_revived_order_in_flight_asks_the_broker_and_arms_its_timer() -> None:
    run = sent()
    revived = Run(run.order)
    revived(Take(reconcile=True))
    assert revived.kinds == [] and revived.effects(AskBroker) == [AskBroker()]
    assert revived.effects(ArmTimer) == [ArmTimer(timedelta(seconds=5), run.order.version, 0)]


def test_an_order_revived_before_anything_was_recorded_is_asked_about_not_sent() -> None:
    run = Run(new_order())
    run(Take(reconcile=True))
    assert run.kinds == [E.CREATED] and run.effects(AskBroker) and run.effects(SendOrder) == []
    run(Status(BrokerState.NOT_FOUND))
    assert run.kinds == [E.SUBMITTED] and run.effects(SendOrder) == [SendOrder()]


def test_an_order_revived_that_the_broker_had_filled_is_filled() -> None:
    run = Run(new_order())
    run(Take(reconcile=True))
    run(Status(BrokerState.FILLED, 9001, (fill(run.order, 1, 1.0),)))
    assert run.kinds == [E.SUBMITTED, E.QUERIED, E.FILL] and run.order.status is OrderStatus.FILLED


def test_an_order_whose_created_alone_was_recorded_is_asked_about_when_revived_and_takes_its_fill() -> None:
    created = Run(new_order())
    created(Take(reconcile=True))
    revived = Run(created.order)  # version 1, phase new
    revived(Take(reconcile=True))
    assert revived.effects(AskBroker) == [AskBroker()] and revived.effects(ArmTimer)
    revived(Dealt(fill(revived.order, 1, 1.0)))
    assert revived.kinds == [E.SUBMITTED, E.FILL] and revived.order.status is OrderStatus.FILLED


def test_the_order_is_the_fold_of_its_events() -> None:
    run = sent(OrderType.LIMIT, quantity=1.0)
    run(Placed(555))
    run(Dealt(fill(run.order, 1, 0.4)))
    run(Dealt(fill(run.order, 2, 0.6)))
    assert model.fold(run.history) == run.order
    with pytest.raises(model.IllegalTransition):
        model.apply(run.order, run.history[1])  # out of sequence


def test_a_revival_starts_before_the_first_gap_in_what_was_recorded() -> None:
    run = sent(OrderType.LIMIT, quantity=1.0)
    run(Placed(555))
    run(Dealt(fill(run.order, 1, 1.0)))
    created, submitted, placed, filled = run.history
    assert model.unbroken([created, submitted, placed, filled]) == run.order
    assert model.unbroken([filled, created, submitted]) == submitted.order  # order of arrival does not matter
    assert model.unbroken([created, filled]) == created.order  # SUBMITTED and PLACED lost: from after CREATED
    assert model.unbroken([filled]) is None  # CREATED lost: from what the supervisor handed out


# --- timers --------------------------------------------------------------------------------------


def test_silence_is_asked_about_with_a_doubling_wait_and_a_stale_timer_is_moot() -> None:
    run = sent()
    version = run.order.version
    run(TimerFired(version, 0))
    assert run.effects(AskBroker) == [AskBroker()] and run.effects(ArmTimer) == [ArmTimer(timedelta(seconds=10), version, 1)]
    run(TimerFired(version, 5))
    assert run.effects(ArmTimer) == [ArmTimer(timedelta(seconds=160), version, 6)]
    run(TimerFired(version, 9))
    assert run.effects(ArmTimer) == [ArmTimer(timedelta(seconds=160), version, 10)]  # capped at 2**5
    run(Dealt(fill(run.order, 1, 0.5)))
    run(TimerFired(version, 0))
    assert run.last.effects == [] and run.kinds == []


# --- modify --------------------------------------------------------------------------------------


def test_a_modify_is_checked_against_the_quote_sent_and_applied() -> None:
    run = working()
    change = OrderChange(request_id=uuid.uuid4(), price=1.08420)
    run(Modify(change))
    assert run.kinds == [E.MODIFY_REQUESTED] and run.effects(FetchQuote) == [FetchQuote()]
    assert run.order.pending_modify == change and model.needs_actor(run.order)
    run(QuoteArrived((1.08500, 1.08510)))
    assert run.kinds == [E.MODIFY_SENT] and run.effects(SendModify) == [SendModify(change)] and run.order.modify_sends == 1
    run(ModifyAnswered(Retcode.DONE, "Request completed"))
    assert (run.kinds, run.order.price, run.order.pending_modify) == ([E.MODIFIED], 1.08420, None)
    assert (run.order.phase, model.is_resting(run.order)) == (Phase.WORKING, True)


def test_a_modify_outside_the_price_band_is_refused_before_the_broker() -> None:
    run = working()
    run(Modify(OrderChange(request_id=uuid.uuid4(), price=2.0)))
    run(QuoteArrived((1.08500, 1.08510)))
    assert run.kinds == [E.MODIFY_REFUSED] and "price_out_of_band" in (run.last.events[0].detail or "")
    assert run.order.pending_modify is None and run.effects(SendModify) == []


def test_an_unanswered_modify_is_sent_once_more_then_refused_as_unknown() -> None:
    run = working()
    run(Modify(OrderChange(request_id=uuid.uuid4(), sl=1.08000)))
    run(QuoteArrived((1.08500, 1.08510)))
    assert run.effects(ArmTimer) == [ArmTimer(timedelta(seconds=7), run.order.version, 0)]
    run(TimerFired(run.order.version, 0))
    assert run.kinds == [E.MODIFY_SENT] and run.order.modify_sends == 2
    run(TimerFired(run.order.version, 0))
    assert run.kinds == [E.MODIFY_REFUSED] and "may or may not" in (run.last.events[0].detail or "")


def test_a_modify_to_an_infinite_take_profit_is_refused_before_the_broker() -> None:
    run = working()
    run(Modify(OrderChange(request_id=uuid.uuid4(), tp=float("inf"))))
    run(QuoteArrived((1.08500, 1.08510)))
    assert run.kinds == [E.MODIFY_REFUSED] and "not a finite price" in (run.last.events[0].detail or "")


def test_a_second_modify_while_one_is_pending_and_a_modify_of_a_market_order_are_refused() -> None:
    run = working()
    run(Modify(OrderChange(request_id=uuid.uuid4(), price=1.08420)))
    run(Modify(OrderChange(request_id=uuid.uuid4(), price=1.08410)))
    assert run.kinds == [E.MODIFY_REFUSED] and "still waiting" in (run.last.events[0].detail or "")
    market = sent()
    market(Modify(OrderChange(request_id=uuid.uuid4(), price=1.08420)))
    assert market.kinds == [E.MODIFY_REFUSED] and market.order.pending_modify is None


def test_a_filled_orders_modify_is_its_positions_sl_tp() -> None:
    run = sent()
    run(Dealt(fill(run.order, 1, 1.0)))
    run(Modify(OrderChange(request_id=uuid.uuid4(), sl=1.08000)))
    assert run.kinds == [E.MODIFY_REQUESTED] and run.order.status is OrderStatus.FILLED and model.needs_actor(run.order)
    run(QuoteArrived((1.08500, 1.08510)))
    run(ModifyAnswered(Retcode.NO_CHANGES, "No changes"))  # a resend finding the first applied
    assert run.order.stop_loss == 1.08 and not model.needs_actor(run.order)


def test_a_revived_order_with_a_modify_already_sent_sends_it_again() -> None:
    run = working()
    change = OrderChange(request_id=uuid.uuid4(), tp=1.09000)
    run(Modify(change))
    run(QuoteArrived((1.08500, 1.08510)))
    revived = Run(run.order)
    revived(Take(reconcile=True))
    assert revived.effects(SendModify) == [SendModify(change)]


def test_an_order_that_ends_drops_its_pending_modify() -> None:
    run = working()
    run(Modify(OrderChange(request_id=uuid.uuid4(), price=1.08420)))
    run(Ended(EndCause.EXPIRED, 1.0))
    assert run.order.pending_modify is None and not model.needs_actor(run.order)


# --- the table itself ------------------------------------------------------------------------------


def test_every_phase_is_reachable_and_each_maps_to_one_of_the_seven_statuses() -> None:
    reachable = {Phase.NEW} | set(model.TRANSITIONS.values()) | {Phase.FILLED}
    assert reachable == set(Phase)
    assert {model.public_status(phase, filled) for phase in Phase for filled in (0, 1)} == set(OrderStatus)
    assert model.public_status(Phase.PENDING_CANCEL, 1) is OrderStatus.PARTIALLY_FILLED


@pytest.mark.parametrize(
    ("phase", "kind"),
    [(Phase.NEW, E.PLACED), (Phase.FILLED, E.CANCELLED), (Phase.REJECTED, E.SUBMITTED), (Phase.WORKING, E.OUTCOME_UNKNOWN), (Phase.CANCELLED, E.CANCEL_REQUESTED)],
)
def test_what_cannot_happen_to_an_order_is_not_in_the_table(phase: Phase, kind: E) -> None:
    assert (phase, kind) not in model.TRANSITIONS


def test_an_ended_order_takes_nothing_but_a_fill_its_positions_modify_or_a_late_placement_or_refusal() -> None:
    ended = {(phase, kind) for (phase, kind) in model.TRANSITIONS if phase in model.ENDED}
    assert {kind for _, kind in ended} <= {E.MODIFY_REQUESTED, E.MODIFY_SENT, E.MODIFIED, E.MODIFY_REFUSED, E.PLACED, E.REJECTED}
    assert {phase for phase, kind in ended if kind in (E.PLACED, E.REJECTED)} == {Phase.FAILED}
    assert {phase for phase, kind in ended if kind not in (E.MODIFY_REFUSED, E.PLACED, E.REJECTED)} == {Phase.FILLED}


def test_exact_volumes_and_prices_on_the_symbol_catalogue() -> None:
    eurusd, gold = SYMBOLS["EURUSD"], SYMBOLS["XAUUSD"]
    assert eurusd.steps(0.1 + 0.2) == 30 and eurusd.volume_of(30) == 0.3
    assert eurusd.points(1.08503) == 108503 and gold.points(2650.07) == 265007
    assert model.slippage_points(-1, 2649.95, 2650.0, gold) == 5  # a sell 5 points below: adverse
