"""MT5's wire format, translated in one place.

Outward: the order request (MT5's order_send fields on the submitted status message) and the
modify request, built from the model's order. Inward: the connector's news turned into the
model's broker reports (model.order), so the model never sees an MT5 type or retcode table.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from messages import broker as wire
from messages.actor import BrokerNews, ModifyResult
from messages.enums import Filling, Mt5OrderType, Mt5TimeType, OrderType, Retcode, Side, TimeInForce, TradeAction
from messages.order import Fill, Order, OrderChange, OrderStatusMessage, execution_id_for
from model import order as model
from service.config import Settings

MT5_TYPES = {
    (OrderType.MARKET, Side.BUY): Mt5OrderType.BUY,
    (OrderType.MARKET, Side.SELL): Mt5OrderType.SELL,
    (OrderType.LIMIT, Side.BUY): Mt5OrderType.BUY_LIMIT,
    (OrderType.LIMIT, Side.SELL): Mt5OrderType.SELL_LIMIT,
    (OrderType.STOP, Side.BUY): Mt5OrderType.BUY_STOP,
    (OrderType.STOP, Side.SELL): Mt5OrderType.SELL_STOP,
    (OrderType.STOP_LIMIT, Side.BUY): Mt5OrderType.BUY_STOP_LIMIT,
    (OrderType.STOP_LIMIT, Side.SELL): Mt5OrderType.SELL_STOP_LIMIT,
}
MT5_TIME = {TimeInForce.GTC: Mt5TimeType.GTC, TimeInForce.DAY: Mt5TimeType.DAY, TimeInForce.GTD: Mt5TimeType.SPECIFIED}
END_CAUSES = {
    wire.CancelCause.CLIENT: model.EndCause.CANCELLED,
    wire.CancelCause.EXPIRED: model.EndCause.EXPIRED,
    wire.CancelCause.UNFILLED: model.EndCause.UNFILLED,
}
BROKER_STATES = {
    wire.BrokerOrderState.UNKNOWN: model.BrokerState.NOT_FOUND,
    wire.BrokerOrderState.PLACED: model.BrokerState.WORKING,
    wire.BrokerOrderState.PARTIALLY_FILLED: model.BrokerState.PARTIALLY_FILLED,
    wire.BrokerOrderState.FILLED: model.BrokerState.FILLED,
    wire.BrokerOrderState.CANCELLED: model.BrokerState.CANCELLED,
    wire.BrokerOrderState.EXPIRED: model.BrokerState.EXPIRED,
    wire.BrokerOrderState.REJECTED: model.BrokerState.REJECTED,
}


def order_request(order: Order, settings: Settings, actor_address: str, at: datetime) -> wire.OrderRequest:
    """The submitted status message (``order`` is submitted), which is also MT5's order_send request."""
    pending = order.order_type is not OrderType.MARKET
    if order.order_type is OrderType.STOP_LIMIT:
        price, stoplimit = order.stop_price, order.price
    elif order.order_type is OrderType.STOP:
        price, stoplimit = order.stop_price, None
    else:
        price, stoplimit = (order.price if pending else order.expected_price), None
    return wire.OrderRequest(
        **msgspec.structs.asdict(OrderStatusMessage.of_order(order, actor_address, at)),
        action=TradeAction.PENDING if pending else TradeAction.DEAL,
        type=MT5_TYPES[(order.order_type, order.side)],
        volume=order.quantity,
        price=price,
        stoplimit=stoplimit,
        sl=None if order.closes_position else order.stop_loss,
        tp=None if order.closes_position else order.take_profit,
        deviation=settings.deviation_points,
        type_time=MT5_TIME[order.time_in_force],
        expiration=order.expires_at,
        # A market order takes what the book gives within the deviation and cancels the rest
        # (its remainder would otherwise wait at the broker with nothing to trigger it); a
        # pending order keeps working until it is filled, cancelled or expires.
        type_filling=Filling.RETURN if pending else Filling.IOC,
        magic=settings.magic,
        comment=order.order_id.hex[:31],
        position=order.close_position,
    )


def modify_request(order: Order, change: OrderChange) -> wire.ModifyRequest:
    fields = msgspec.structs.asdict(change)
    del fields["request_id"]
    return wire.ModifyRequest(order_id=order.order_id, **fields)


def fill_of(deal: wire.BrokerFill) -> Fill:
    """The execution record of one broker deal, before slippage (model.order.priced adds it)."""
    return Fill(
        execution_id=execution_id_for(deal.deal),
        order_id=deal.order_id,
        deal=deal.deal,
        ticket=deal.ticket,
        position_ticket=deal.position,
        symbol=deal.symbol,
        side=deal.side,
        fill_price=deal.price,
        fill_quantity=deal.volume,
        expected_price=None,
        slippage=None,
        slippage_pips=None,
        commission=deal.commission,
        swap=deal.swap,
        entry=deal.entry,
        reason=deal.reason,
        execution_timestamp=deal.timestamp,
    )


def report_of(news: BrokerNews) -> model.BrokerReport:
    """What the connector's message tells the model about the order."""
    match news:
        case wire.BrokerFill():
            return model.Dealt(fill_of(news))
        case wire.BrokerPlaced():
            return model.Placed(news.ticket)
        case wire.BrokerError():
            # 10012/10031 are not refusals: the model tells them apart (model.order.UNKNOWN_OUTCOME).
            return model.Refused(news.retcode, news.comment)
        case wire.BrokerCancelled():
            return model.Ended(END_CAUSES[news.cause], news.remaining)
        case wire.BrokerOrderReport():
            state = BROKER_STATES[news.state]
            if state is model.BrokerState.WORKING and news.triggered:
                state = model.BrokerState.TRIGGERED
            return model.Status(state, news.ticket, tuple(fill_of(deal) for deal in news.deals), news.retcode, news.comment)
        case ModifyResult():
            return model.ModifyAnswered(news.result.retcode, news.result.comment)
        case wire.RequestResult():  # the answer to a cancel
            return model.CancelAnswered(news.retcode == Retcode.DONE, news.retcode, news.comment)
