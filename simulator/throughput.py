"""``python -m simulator.throughput [--orders N] [--rate R [--consumer push|fetch]]``: the paper
broker's throughput, or its latency at a steady rate.

Starts a private nats-server and ``python -m simulator`` as a separate process (as deployed,
no added latency) and publishes N market orders with JetStream like the service does.

- burst (default): all at once; times from the first publish until the last fill has arrived.
- ``--rate R``: R orders per second on a fixed schedule; times each order from its JetStream
  publish to its broker.fill arriving on a durable JetStream consumer of ``broker.>`` with
  explicit acks: a push consumer (``--consumer push``), or a pull consumer fetched as the
  service's gateway does, ``fetch(256, timeout=1.0)`` (``--consumer fetch``).

Both processes are stopped by pid.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from messages.broker import BrokerError, BrokerFill
from messages.codec import decode, encode
from messages.enums import Mt5OrderType
from simulator.client import SimClient, order_request
from simulator.local_nats import LocalNats

SYMBOLS = ("EURUSD", "GBPUSD", "USDJPY", "XAUUSD")


async def connected(url: str) -> SimClient:
    client = await SimClient.connect(url)
    deadline = time.monotonic() + 15
    while True:  # until the simulator answers (and so has made its streams)
        try:
            await client.control()
            return client
        except Exception:
            if time.monotonic() > deadline:
                raise RuntimeError("the simulator did not come up") from None
            await asyncio.sleep(0.05)


def market_orders(orders: int) -> list:
    return [order_request(Mt5OrderType.BUY if n % 2 else Mt5OrderType.SELL, 0.01, symbol=SYMBOLS[n % len(SYMBOLS)]) for n in range(orders)]


def percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, int(len(ordered) * fraction + 0.5) - 1))]


async def measure(url: str, orders: int) -> dict[str, float]:
    """Submit ``orders`` market orders to the simulator at ``url``; time until each has its outcome."""
    client = await connected(url)
    requests = market_orders(orders)
    sent: dict[uuid.UUID, float] = {}
    latencies: list[float] = []
    rejected: list[BrokerError] = []
    done = asyncio.Event()

    async def on_outcome(msg: Msg) -> None:
        outcome = decode(msg.data, BrokerError if msg.subject.startswith("broker.error.") else BrokerFill)
        if isinstance(outcome, BrokerError):
            rejected.append(outcome)
        if outcome.order_id in sent:
            latencies.append(time.perf_counter() - sent.pop(outcome.order_id))
        if len(latencies) == orders:
            done.set()

    # Core subscriptions: with no faults each order gives exactly one fill (0.01 lots) or error.
    await client.nc.subscribe("broker.fill.>", cb=on_outcome)
    await client.nc.subscribe("broker.error.>", cb=on_outcome)
    await client.nc.flush()
    started = time.perf_counter()
    futures = []
    for request in requests:
        sent[request.order_id] = time.perf_counter()
        futures.append(
            await client.js.publish_async(
                f"orders.submitted.{request.symbol}", encode(request), headers={"Nats-Msg-Id": str(request.order_id)}
            )
        )
    await asyncio.gather(*futures)
    submitted = time.perf_counter() - started
    await asyncio.wait_for(done.wait(), timeout=120)
    elapsed = time.perf_counter() - started
    await client.close()
    latencies.sort()
    return {
        "orders": orders,
        "submit_s": submitted,
        "elapsed_s": elapsed,
        "per_second": orders / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "rejected": len(rejected),
    }


async def measure_rate(url: str, orders: int, rate: float, consumer: str) -> dict[str, float]:
    """``orders`` market orders at ``rate`` per second; publish-to-fill latency of each, as a
    JetStream consumer of the broker stream receives it."""
    client = await connected(url)
    js = client.js
    requests = market_orders(orders)
    sent: dict[uuid.UUID, float] = {}
    latencies: list[float] = []
    rejected: list[BrokerError] = []
    done = asyncio.Event()

    def arrived(msg: Msg, at: float) -> None:
        outcome = decode(msg.data, BrokerError if msg.subject.startswith("broker.error.") else BrokerFill)
        if isinstance(outcome, BrokerError):
            rejected.append(outcome)
        if outcome.order_id in sent:
            latencies.append(at - sent.pop(outcome.order_id))
        if len(latencies) == orders:
            done.set()

    stream = await js.find_stream_name_by_subject("broker.>")
    config = ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.NEW, ack_wait=30)
    fetching = None
    if consumer == "push":

        async def on_message(msg: Msg) -> None:
            arrived(msg, time.perf_counter())
            await msg.ack()

        await js.subscribe("broker.>", durable="throughput", stream=stream, cb=on_message, manual_ack=True, config=config)
    else:
        subscription = await js.pull_subscribe("broker.>", durable="throughput", stream=stream, config=config)

        async def fetch_loop() -> None:
            while not done.is_set():
                try:
                    batch = await subscription.fetch(256, timeout=1.0)  # as the service's gateway
                except asyncio.TimeoutError:
                    continue
                at = time.perf_counter()
                for msg in batch:
                    arrived(msg, at)
                    await msg.ack()

        fetching = asyncio.create_task(fetch_loop())
    futures = []
    started = time.perf_counter()
    for n, request in enumerate(requests):
        # A fixed schedule (not a sleep per order), so the rate does not drift with the work done.
        pause = started + n / rate - time.perf_counter()
        if pause > 0:
            await asyncio.sleep(pause)
        sent[request.order_id] = time.perf_counter()
        futures.append(
            await js.publish_async(f"orders.submitted.{request.symbol}", encode(request), headers={"Nats-Msg-Id": str(request.order_id)})
        )
    publishing = time.perf_counter() - started
    await asyncio.gather(*futures)
    await asyncio.wait_for(done.wait(), timeout=60)
    if fetching is not None:
        await asyncio.wait_for(fetching, timeout=5)
    await client.close()
    latencies.sort()
    return {
        "orders": orders,
        "rate": orders / publishing if publishing else float("inf"),
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p90_ms": percentile(latencies, 0.90) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "max_ms": latencies[-1] * 1000,
        "rejected": len(rejected),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m simulator.throughput", description=__doc__)
    parser.add_argument("--orders", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=0.0, help="orders per second on a steady schedule (0: one burst)")
    parser.add_argument("--consumer", choices=("push", "fetch"), default="push", help="how --rate receives broker news")
    parser.add_argument("--sim-log-level", default="INFO", help="the simulator's log level (its log goes to a file)")
    args = parser.parse_args()
    if args.rate < 0 or args.orders < 1:
        parser.error("--rate must be >= 0 and --orders >= 1")
    with tempfile.TemporaryDirectory(prefix="sim-throughput-") as directory, LocalNats(Path(directory)) as url:
        log_path = Path(directory) / "simulator.log"
        with open(log_path, "wb") as log_file:
            simulator = subprocess.Popen(
                # A balance large enough that margin never refuses an order of the run.
                [sys.executable, "-m", "simulator", "--nats-url", url, "--tick-ms", "0", "--balance", "1e9", "--log-level", args.sim_log_level],
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
            try:
                if args.rate:
                    result = asyncio.run(measure_rate(url, args.orders, args.rate, args.consumer))
                else:
                    result = asyncio.run(measure(url, args.orders))
            finally:
                simulator.terminate()
                try:
                    simulator.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    simulator.kill()
                    simulator.wait()
    if args.rate:
        print(
            f"{result['orders']} market orders at {result['rate']:.0f} orders/s (JetStream in, broker.fill on a {args.consumer} "
            f"consumer, simulator log {args.sim_log_level}): publish-to-fill p50 {result['p50_ms']:.2f} ms, "
            f"p90 {result['p90_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms, max {result['max_ms']:.2f} ms; "
            f"rejected {result['rejected']:.0f}"
        )
        return
    print(
        f"{result['orders']} market orders (JetStream in, one fill each out, simulator log {args.sim_log_level}): "
        f"all done in {result['elapsed_s']:.2f} s -> {result['per_second']:.0f} orders/s; "
        f"submitting took {result['submit_s']:.2f} s; publish-to-fill p50 {result['p50_ms']:.0f} ms, p99 {result['p99_ms']:.0f} ms; "
        f"rejected {result['rejected']:.0f}"
    )


if __name__ == "__main__":
    main()
