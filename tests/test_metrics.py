"""The Prometheus endpoint, scraped over HTTP while the service runs as in production: its
figures add up over every process of the actor tree and agree with what happened."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pytest
from chaos import ROLE_CLASSES, kill, pids_of
from harness import RunningSystem, signal, wait_until
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str) -> Iterator[RunningSystem]:
    # Limits wide enough for an order the broker refuses for want of margin.
    running = RunningSystem(
        tmp_path_factory.mktemp("metrics"), kafka_bootstrap, reconcile_interval_s=3600, max_order_volume=100.0, max_symbol_exposure=1000.0
    )
    yield running
    running.close()


def scrape(system: RunningSystem) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{system.settings.metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def settled(system: RunningSystem, expected: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> Samples:
    """Scrape until every expected figure is there (a flush or a poll may still be on its way)."""

    def matching() -> Samples | None:
        samples = scrape(system)
        return samples if all(samples.get(key, 0.0) == want for key, want in expected.items()) else None

    try:
        return wait_until(matching, 20, 0.25, "the expected figures")
    except AssertionError:
        samples = scrape(system)
        wrong = {key: (samples.get(key, 0.0), want) for key, want in expected.items() if samples.get(key, 0.0) != want}
        raise AssertionError(f"figures (got, expected): {wrong}") from None


def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return (name, tuple(sorted(labels.items())))


def test_the_figures_agree_with_what_happened(system: RunningSystem) -> None:
    quote = system.control().quotes["EURUSD"]
    markets = [signal("EURUSD", "buy", 0.1, quote.ask) for _ in range(5)]
    resting = signal("EURUSD", "buy", 0.1, round(quote.bid - 0.03, 5), order_type="limit")
    rejected = signal("XAUUSD", "buy", 100.0, 2650.0)  # more margin than the account has
    order_ids = [system.send(payload) for payload in [*markets, resting, rejected]]
    system.send(signal(signal_type="hold"))
    system.send(signal(signal_type="hold"))
    system.send(signal(risk_approval_status="pending"))
    system.send(b"{not json", "signals.approved.EURUSD")
    for order_id in order_ids[:5]:
        assert order_id is not None
        system.wait_status(order_id, "filled")
    assert order_ids[5] is not None and order_ids[6] is not None
    system.wait_status(order_ids[6], "rejected")
    wait_until(lambda: (row := system.order_row(order_ids[5])) is not None and row["broker_order_id"], 15, 0.1, "the limit order resting")
    system.send(markets[0])  # a replay: acknowledged, nothing done

    samples = settled(
        system,
        {
            key("execution_signals_total", outcome="executed"): 7,
            key("execution_signals_total", outcome="dead_lettered"): 4,
            key("execution_signals_total", outcome="replay"): 1,
            key("execution_dead_letters_total", reason="hold_signal"): 2,
            key("execution_dead_letters_total", reason="not_approved"): 1,
            key("execution_dead_letters_total", reason="malformed_json"): 1,
            key("execution_orders_total", status="filled"): 5,
            key("execution_orders_total", status="rejected"): 1,
            key("execution_fills_total", symbol="EURUSD"): 5,
            key("execution_broker_rejects_total", retcode="10019"): 1,
            # One observation per order: created -> request out, and request -> first answer.
            key("execution_signal_to_broker_seconds_count"): 7,
            key("execution_broker_round_trip_seconds_count", answer="fill"): 5,
            key("execution_broker_round_trip_seconds_count", answer="placed"): 1,
            key("execution_broker_round_trip_seconds_count", answer="error"): 1,
            key("execution_fill_to_recorded_seconds_count"): 5,
            key("execution_open_orders", state="active"): 0,
            key("execution_open_orders", state="resting"): 1,
            key("execution_open_orders", state="waiting"): 0,
            key("execution_order_actors", state="idle"): system.settings.order_actor_pool,
            key("execution_order_actors", state="size"): system.settings.order_actor_pool,
            key("execution_writer_backlog", sink="clickhouse"): 0,
            key("execution_writer_backlog", sink="archiver"): 0,
            key("execution_writer_backlog", sink="status_publisher"): 0,
            key("execution_trading_halted"): 0,
        },
    )
    assert len([name for name, _ in samples if name == "execution_dead_letters_total"]) == 3
    assert 0 < value(samples, "execution_signal_to_broker_seconds_sum") < 7 * 5
    # JetStream's own count, polled every few seconds: every signal was acknowledged.
    prefix = system.settings.stream_prefix
    for consumer in (f"{prefix}_ingress", f"{prefix}_ingress_bare", f"{prefix}_gateway"):
        wanted = {key("execution_jetstream_pending_messages", consumer=consumer): 0, key("execution_jetstream_ack_pending_messages", consumer=consumer): 0}
        assert all(k in settled(system, wanted) for k in wanted), consumer


def test_restarts_are_counted_and_the_dead_figures_still_count(system: RunningSystem) -> None:
    before = scrape(system)
    pids = pids_of(system)
    kill(pids["OrderActor"][0][0])
    size = system.settings.order_actor_pool
    settled(system, {key("execution_actor_restarts_total", role="order"): 1, key("execution_order_actors", state="size"): size})
    ((archiver, _),) = pids[ROLE_CLASSES["archiver"]]
    kill(archiver)
    # An order after it: its events reach the archiver's successor (sent to the dead one, they
    # come back to the supervisor as dead letters, if it has not heard of the death yet).
    order_id = system.send(signal("EURUSD", "buy", 0.1, system.control().quotes["EURUSD"].ask))
    assert order_id is not None
    system.wait_status(order_id, "filled")
    after = settled(
        system,
        {
            key("execution_actor_restarts_total", role="archiver"): 1,
            key("execution_orders_total", status="filled"): value(before, "execution_orders_total", status="filled") + 1,
            key("execution_writer_backlog", sink="archiver"): 0,
        },
    )
    # What the killed processes counted is still in the sums.
    assert value(after, "execution_signals_total", outcome="executed") == value(before, "execution_signals_total", outcome="executed") + 1
    fills = value(before, "execution_broker_round_trip_seconds_count", answer="fill")
    assert value(after, "execution_broker_round_trip_seconds_count", answer="fill") == fills + 1
