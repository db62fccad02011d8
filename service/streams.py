"""NATS connection and the JetStream streams the service relies on.

Streams make the subjects durable: a signal approved while the service is down waits in
``{prefix}_SIGNALS`` for the durable consumer, and an unacknowledged message comes back.
``{prefix}_ORDERS`` deduplicates by ``Nats-Msg-Id`` (= order_id) over the idempotency window
(24 h by default): a re-sent order request is dropped by the server, which is what makes
"at most one broker order per signal" hold on the wire as well as in our own state.
"""

from __future__ import annotations

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig, SubjectTransform
from nats.js.errors import NotFoundError

from messages.order import SIGNAL_ALERT_SUBJECT
from service.config import Settings
from service.credentials import redact_url
from service.logs import Log
from service.partitions import broker_transform, signal_transform

log = Log(__name__)

# Messages are kept a week (limits retention): long enough to replay after an outage and to
# inspect, bounded so a long-running node's disk does not fill.
_MAX_AGE_S = 7 * 24 * 3600.0
# JetStream's own default dedup window, for the streams where dedup is not the point.
_DEFAULT_DUPLICATE_WINDOW_S = 120.0
# Signals on the contract's subject, and on the bare subject (no symbol token), which is not
# the contract but is captured so that such a signal is dead-lettered rather than lost.
BARE_SIGNAL_SUBJECT = "signals.approved"
SIGNAL_SUBJECTS = ("signals.approved.>", BARE_SIGNAL_SUBJECT)
# NATS's own default max_payload, stated: whatever the server accepts lands in the stream and
# is refused by ingress with a dead letter (a bounded one), not by a silent publish failure.
MAX_SIGNAL_MESSAGE_BYTES = 1024 * 1024


class StreamMismatch(Exception):
    """A stream is set up for another way of sharing the work than this instance's."""


def stream_configs(settings: Settings) -> list[StreamConfig]:
    """The streams, by name and subjects; names carry the prefix so test runs do not collide.
    With partitions, signals and broker news are stored under their partition (service.partitions)."""
    p = settings.stream_prefix
    orders_window = settings.idempotency_window_hours * 3600.0
    n = settings.partitions

    def cfg(
        suffix: str,
        subjects: list[str],
        window: float,
        description: str,
        max_msg_size: int | None = None,
        transform: SubjectTransform | None = None,
    ) -> StreamConfig:
        return StreamConfig(
            name=f"{p}_{suffix}",
            description=description,
            subjects=subjects,
            storage=StorageType.FILE,
            retention=RetentionPolicy.LIMITS,
            max_age=max(_MAX_AGE_S, window),
            duplicate_window=window,
            max_msg_size=max_msg_size,
            subject_transform=transform,
        )

    return [
        cfg("SIGNALS", list(SIGNAL_SUBJECTS), _DEFAULT_DUPLICATE_WINDOW_S,
            "risk-approved signals waiting to be executed", MAX_SIGNAL_MESSAGE_BYTES, signal_transform(n) if n else None),
        cfg("ORDERS", ["orders.>"], orders_window,
            "order requests and status; deduplicated by Nats-Msg-Id = order_id"),
        cfg("BROKER", ["broker.>"], _DEFAULT_DUPLICATE_WINDOW_S,
            "fills, errors and reports from mt5-connector", transform=broker_transform(n) if n else None),
        cfg("DEADLETTER", [settings.dead_letter_subject, SIGNAL_ALERT_SUBJECT], _DEFAULT_DUPLICATE_WINDOW_S,
            "rejected input with the reason, and alerts about input"),
    ]


async def ensure_streams(js: JetStreamContext, settings: Settings) -> None:
    """Create each stream, or update it to the configuration above; safe to run every start."""
    for config in stream_configs(settings):
        try:
            info = await js.stream_info(config.name)
        except NotFoundError:
            info = await js.add_stream(config)
            log.info("created JetStream stream %s on %s", config.name, config.subjects)
        else:
            if (existing := info.config.subject_transform) is not None and existing != config.subject_transform:
                # Instances that split the work differently would each take what is not theirs.
                raise StreamMismatch(
                    f"stream {config.name} stores its messages as {existing.dest}, but this instance is configured "
                    f"with partitions = {settings.partitions}: every instance must use the same number "
                    f"(change it on the stream first, with every instance stopped)"
                )
            # Idempotent on the server when nothing changed; refuses immutable changes
            # (e.g. storage type) loudly, which is what we want.
            info = await js.update_stream(config)
        if info.config.subject_transform != config.subject_transform:
            # A server before 2.10 ignores the transform: every instance would read everything.
            raise StreamMismatch(
                f"the NATS server did not keep the partition mapping of stream {config.name}: "
                "partitions need nats-server 2.10 or later"
            )


async def connect_nats(settings: Settings, name: str = "execution-service") -> tuple[Client, JetStreamContext]:
    """Connect with reconnects that never give up (also for the first connect: the service
    may start before NATS) and a short wait between attempts, so an outage costs little.
    Credentials and TLS come from the settings; URLs are logged without their userinfo."""

    async def on_error(exc: Exception) -> None:
        log.warning("NATS: %s", exc)

    async def on_disconnected() -> None:
        log.warning("NATS disconnected from %s", settings.nats_server)

    async def on_reconnected() -> None:
        log.info("NATS reconnected to %s", redact_url(nc.connected_url.geturl()) if nc.connected_url else "?")

    nc = await nats.connect(
        settings.nats_url,
        **settings.nats_connect_options(),
        name=name,
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.25,  # type: ignore[arg-type]  # nats-py annotates int, takes float
        connect_timeout=2,
        error_cb=on_error,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
    )
    return nc, nc.jetstream()
