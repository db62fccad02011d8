"""Every metric of the service, defined once (names, help texts, labels), and its endpoint.

Each actor is an OS process of its own, so prometheus_client runs in multiprocess mode: every
process writes its figures to files of its own in ``PROMETHEUS_MULTIPROC_DIR``
(run_dir/metrics) and the launcher serves what they add up to. Counters and histograms add up
over every process that ever wrote, dead ones included: what a killed actor counted did happen.
Each gauge has one writer at a time (the supervisor, the recorder, one consumer's poller), so
gauges are ``mostrecent``: the successor of an actor that died replaces its figure with the
first one it sets. (A ``live`` mode would not do that by itself: prometheus_client keeps a
dead process's live gauges until someone calls ``mark_process_dead`` for its pid.)

Actors call one of these at the place the event happens; a figure is a write to a memory-mapped
file of the actor's own process, never a message.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector

from model.order import TERMINAL
from messages import broker as wire
from messages.actor import BrokerNews
from messages.order import Fill, OrderEvent
from service.logs import Log

log = Log(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONSUMER_POLL_S = 5.0
# From a millisecond (the targets are a few) to the seconds of an outage.
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ANSWERS: dict[type, str] = {wire.BrokerFill: "fill", wire.BrokerPlaced: "placed", wire.BrokerError: "error"}

# --- counters -------------------------------------------------------------------------------

SIGNALS = Counter(
    "execution_signals",
    "Signals taken in, by outcome: executed (gave an order), dead_lettered, replay (already executed), "
    "at_broker (came again with its order out but not recorded: taken as the broker has it)",
    ["outcome"],
)
DEAD_LETTERS = Counter("execution_dead_letters", "Dead letters published on the dead-letter subject, by reason", ["reason"])
ORDERS = Counter("execution_orders", "Orders that reached a terminal status, counted as ClickHouse has it", ["status"])
FILLS = Counter("execution_fills", "Broker deals recorded in ClickHouse", ["symbol"])
SINK_DEAD_LETTERS = Counter("execution_sink_dead_letters", "Items ClickHouse, Kafka or NATS refused for good, dead-lettered by the writer (role)", ["role"])
BROKER_REJECTS = Counter("execution_broker_rejects", "Orders the broker rejected, by MT5 retcode", ["retcode"])
ACTOR_RESTARTS = Counter("execution_actor_restarts", "Actors that died and were replaced by the supervisor, by role (order: an OrderActor)", ["role"])

# --- histograms -----------------------------------------------------------------------------

SIGNAL_TO_BROKER = Histogram(
    "execution_signal_to_broker_seconds",
    "From a signal's order being created (the supervisor taking it from ingress) to its order request published by the gateway",
    buckets=LATENCY_BUCKETS,
)
BROKER_ROUND_TRIP = Histogram(
    "execution_broker_round_trip_seconds",
    "From an order's submission to the broker's first answer (fill, placed or error) reaching its OrderActor",
    ["answer"],
    buckets=LATENCY_BUCKETS,
)
FILL_TO_RECORDED = Histogram(
    "execution_fill_to_recorded_seconds",
    "From a fill reaching its OrderActor to its insert into ClickHouse done",
    buckets=LATENCY_BUCKETS,
)

# --- gauges (one writer at a time: mostrecent) --------------------------------------------------

OPEN_ORDERS = Gauge(
    "execution_open_orders",
    "Open orders: active (an OrderActor holds it), resting (at the broker, the supervisor holds it), waiting (for an OrderActor)",
    ["state"],
    multiprocess_mode="mostrecent",
)
ORDER_ACTORS = Gauge(
    "execution_order_actors", "The OrderActor pool: idle (warm, holding no order) and size (processes)", ["state"], multiprocess_mode="mostrecent"
)
WRITER_BACKLOG = Gauge(
    "execution_writer_backlog",
    "What the recorder holds, per sink: clickhouse (items not yet inserted), archiver and status_publisher "
    "(events in ClickHouse that sink has not confirmed yet)",
    ["sink"],
    multiprocess_mode="mostrecent",
)
JETSTREAM_PENDING = Gauge(
    "execution_jetstream_pending_messages", "Messages a JetStream consumer has not delivered yet", ["consumer"], multiprocess_mode="mostrecent"
)
JETSTREAM_ACK_PENDING = Gauge(
    "execution_jetstream_ack_pending_messages",
    "Messages a JetStream consumer delivered that are not acknowledged yet",
    ["consumer"],
    multiprocess_mode="mostrecent",
)
TRADING_HALTED = Gauge("execution_trading_halted", "1 while trading is halted (no new signal is executed), else 0", multiprocess_mode="mostrecent")


# --- what the actors call -------------------------------------------------------------------------


def dead_lettered(reason: str) -> None:
    DEAD_LETTERS.labels(reason).inc()
    SIGNALS.labels("dead_lettered").inc()


def submitted(created_at: datetime | None) -> None:
    """An order request went out; ``created_at`` for a new order's first request, else None."""
    if created_at is not None:
        SIGNAL_TO_BROKER.observe(_since(created_at))


def broker_answered(news: BrokerNews, submitted_at: datetime | None) -> None:
    """The first news from the broker about a submitted order."""
    answer = ANSWERS.get(type(news))
    if answer is not None and submitted_at is not None:
        BROKER_ROUND_TRIP.labels(answer).observe(_since(submitted_at))


def recorded(events: Iterable[OrderEvent], deals: Iterable[Fill]) -> None:
    """What one flush put into ClickHouse."""
    for event in events:
        if event.fill is not None:
            FILLS.labels(event.fill.symbol).inc()
            FILL_TO_RECORDED.observe(_since(event.at))
        if event.status in TERMINAL:
            ORDERS.labels(event.status.value).inc()
    for deal in deals:
        FILLS.labels(deal.symbol).inc()


def book(*, active: int, resting: int, waiting: int, idle: int, pool: int, halted: bool) -> None:
    """The supervisor's orders and pool."""
    OPEN_ORDERS.labels("active").set(active)
    OPEN_ORDERS.labels("resting").set(resting)
    OPEN_ORDERS.labels("waiting").set(waiting)
    ORDER_ACTORS.labels("idle").set(idle)
    ORDER_ACTORS.labels("size").set(pool)
    TRADING_HALTED.set(int(halted))


def backlog(unwritten: int, unconfirmed: dict[str, int]) -> None:
    """The recorder's: not yet in ClickHouse, and not yet confirmed by each sink."""
    WRITER_BACKLOG.labels("clickhouse").set(unwritten)
    for sink, count in unconfirmed.items():
        WRITER_BACKLOG.labels(sink).set(count)


async def watch_consumer(js: Any, stream: str, durable: str) -> None:
    """A JetStream consumer's pending counts, read every few seconds (on an actor's loop)."""
    while True:
        try:
            info = await js.consumer_info(stream, durable)
        except Exception as exc:  # NATS away: the figures keep their last value until it is back
            log.debug("consumer_info of %s failed: %s", durable, exc)
        else:
            JETSTREAM_PENDING.labels(durable).set(info.num_pending or 0)
            JETSTREAM_ACK_PENDING.labels(durable).set(info.num_ack_pending or 0)
        await asyncio.sleep(CONSUMER_POLL_S)


def _since(at: datetime) -> float:
    return max(0.0, (datetime.now(UTC) - at).total_seconds())


# --- the launcher's side ------------------------------------------------------------------------


def collect_in(directory: Path) -> None:
    """Make this launcher, and every process forked from it, write its figures to ``directory``.
    prometheus_client chooses multiprocess mode once, when it is imported, by this environment
    variable; a launcher started without it sets it and starts itself again (same pid)."""
    if os.environ.get(MULTIPROC_ENV) != str(directory):
        directory.mkdir(parents=True, exist_ok=True)  # (the import after the exec writes there)
        os.environ[MULTIPROC_ENV] = str(directory)
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def start_afresh() -> None:
    """Clear an earlier run's figures, before the actor system forks its first process."""
    if directory := os.environ.get(MULTIPROC_ENV):
        shutil.rmtree(directory, ignore_errors=True)
        Path(directory).mkdir(parents=True)


def serve(port: int) -> None:
    """Serve the figures of every process on ``port`` (a thread of the launcher)."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    try:
        start_http_server(port, registry=registry)
    except OSError as exc:  # trading goes on without its metrics
        log.error("metrics cannot be served on port %d: %s", port, exc)
