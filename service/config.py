"""One settings object for the whole service.

Values come from, in increasing priority: the defaults below (which work on a laptop),
a TOML file named by ``EXEC_CONFIG``, and environment variables ``EXEC_<FIELD>`` in
upper case (``EXEC_NATS_URL``, ``EXEC_CLICKHOUSE_DSN``, ...). A secret (``nats_password``,
``nats_token``, ``clickhouse_password``) may instead be read from the file named by
``EXEC_<FIELD>_FILE`` (or ``<field>_file`` in the TOML file); the repr of Settings masks them.
"""

from __future__ import annotations

import os
import socket
import tomllib
from pathlib import Path
from typing import Annotated

import msgspec

from model.pretrade import Limits
from service.credentials import NatsOptions, Redacted, is_secret, read_secret

REPO_ROOT = Path(__file__).resolve().parent.parent


class ClickHouseAuth(Redacted, frozen=True, kw_only=True):
    """What a ClickHouse server needs beyond the DSN: a user and password (over the DSN's own)
    and, for https, the CA file to check its certificate with (or no check at all)."""

    user: str = ""
    password: str = ""
    ca_file: str = ""
    verify: bool = True


# NATS's URL, credentials and TLS are NatsOptions' fields (nats_url, nats_user, ...).
class Settings(NatsOptions, frozen=True, kw_only=True, forbid_unknown_fields=True):
    run_dir: str = str(REPO_ROOT / ".run")
    kafka_bootstrap: str = "127.0.0.1:9092"
    # Empty means embedded chdb under run_dir; http(s)://user:pass@host:port/db for a server.
    clickhouse_dsn: str = ""
    # For a server: user and password (over the DSN's), https's CA file, or no certificate check.
    clickhouse_user: str = ""
    clickhouse_password: str = ""
    clickhouse_ca_file: str = ""
    clickhouse_verify: bool = True
    clickhouse_database: str = "suho_analytics"
    archive_topic: str = "order_execution_archive"
    archive_partitions: int = 6
    # How long a send to Kafka may wait for a leader and an answer before it fails (and is retried).
    kafka_request_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 40.0
    admin_port: int = 19500
    # Sharing the work between instances (service.partitions, service.leases). 0: this instance
    # serves every signal alone. N >= 1: signals and broker news are split into N partitions by
    # symbol; each is served by one instance at a time, the one holding its lease, and another
    # takes it over within about lease_ttl_s + a start when that one dies. Every instance must
    # use the same N, its own instance_id and admin port, and one shared ClickHouse server.
    partitions: Annotated[int, msgspec.Meta(ge=0, le=1024)] = 0
    # Empty: <host name>-<admin port>, which a restarted instance keeps.
    instance_id: str = ""
    lease_ttl_s: Annotated[float, msgspec.Meta(ge=1.0)] = 5.0
    # The Prometheus endpoint the launcher serves (service.metrics); 0: none.
    metrics_port: int = 9464
    # The JetStream streams are named {prefix}_SIGNALS, _ORDERS, _BROKER, _DEADLETTER. Their
    # subjects are fixed by the contract, so one NATS server holds one set of them.
    stream_prefix: str = "EXEC"
    dead_letter_subject: str = "signals.deadletter"
    # JetStream delivers a signal at most this often (then its advisory makes it a dead letter).
    signal_max_deliver: int = 20
    # Signals delivered and not yet acknowledged (JetStream's max_ack_pending): more wait in the
    # stream, not in the actors' mailboxes, so an overload cannot outgrow ack_wait and turn
    # into a storm of redeliveries.
    signal_max_ack_pending: int = 1024
    idempotency_window_hours: float = 24.0
    cross_check_trading_signals: bool = False
    default_order_type: str = "market"
    default_time_in_force: str = "GTC"
    deviation_points: int = 20
    magic: int = 770001
    # Warm OrderActor processes kept ready, and the most there may be (one per active order).
    order_actor_pool: int = 8
    order_actor_max: int = 64
    broker_timeout_s: float = 5.0
    reconcile_interval_s: float = 30.0
    auto_correct_positions: bool = False
    # Pre-trade limits (model.pretrade.Limits): the fat-finger band around the last quote, lots
    # per order, lots open per symbol, and how soon a GTD order may expire.
    price_band_pct: float = 5.0
    max_order_volume: float = 20.0
    max_symbol_exposure: float = 100.0
    min_expiry_s: float = 30.0
    batch_size: int = 500
    batch_window_ms: int = 50
    # Events held by the recorder (not yet in ClickHouse, or not yet confirmed by Kafka and
    # NATS) beyond which ingress stops taking signals; they wait in JetStream meanwhile.
    max_held_events: int = 50_000
    log_level: str = "INFO"

    @property
    def limits(self) -> Limits:
        return Limits(
            price_band_pct=self.price_band_pct,
            max_order_volume=self.max_order_volume,
            max_symbol_exposure=self.max_symbol_exposure,
            min_expiry_s=self.min_expiry_s,
        )

    @property
    def instance(self) -> str:
        return self.instance_id or f"{socket.gethostname()}-{self.admin_port}"

    @property
    def dsn(self) -> str:
        return self.clickhouse_dsn or f"chdb://{Path(self.run_dir).resolve()}/chdb"

    @property
    def clickhouse_auth(self) -> ClickHouseAuth:
        return ClickHouseAuth(
            user=self.clickhouse_user,
            password=self.clickhouse_password,
            ca_file=self.clickhouse_ca_file,
            verify=self.clickhouse_verify,
        )


def load_settings(env: dict[str, str] | None = None, **overrides: object) -> Settings:
    env = dict(os.environ if env is None else env)
    values: dict[str, object] = {}
    names = [field.name for field in msgspec.structs.fields(Settings)]
    secrets = [name for name in names if is_secret(name)]
    if config_file := env.get("EXEC_CONFIG"):
        values.update(tomllib.loads(Path(config_file).read_text()))
        for name in secrets:
            if path := values.pop(f"{name}_file", None):
                values[name] = read_secret(str(path))
    for name in names:
        raw = env.get(f"EXEC_{name.upper()}")
        if raw is not None:
            values[name] = raw
    for name in secrets:
        if path := env.get(f"EXEC_{name.upper()}_FILE"):
            values[name] = read_secret(path)
    values.update(overrides)
    # strict=False lets "5.0" and "true" from the environment decode into their typed fields.
    return msgspec.convert(values, Settings, strict=False)
