"""Operating the running service: the trading halt and the service's health (``execution-service
halt``, ``resume``, ``status``). Messages between the CLI and the actors, and the halt as it
is persisted (ClickHouse ``execution_control``)."""

from __future__ import annotations

import uuid
from datetime import datetime

import msgspec

# Namespace of the signal_ids a flatten derives (uuid5 of the halt and the position ticket):
# a repeated flatten under one halt names the same orders, so a position is closed once.
FLATTEN_NAMESPACE = uuid.UUID("6c3f0f6e-8f0b-4c64-a9a6-0e6d2b7a1f03")


def flatten_signal_id(halt_id: uuid.UUID, ticket: int) -> uuid.UUID:
    return uuid.uuid5(FLATTEN_NAMESPACE, f"{halt_id}:{ticket}")


class TradingHalt(msgspec.Struct, frozen=True, kw_only=True):
    """Trading is halted: no new signal is executed until it is resumed."""

    halt_id: uuid.UUID
    reason: str
    since: datetime


class ControlRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One change of the trading control, as ``execution_control`` keeps it (the row of the
    highest version is in force)."""

    version: int
    halt: TradingHalt | None
    at: datetime


# --- halt and resume ----------------------------------------------------------------------


class HaltTrading(msgspec.Struct, frozen=True):
    """To the supervisor: halt (a halt in force is kept, and recorded again); answered with
    ControlAnswer once the record is in ClickHouse."""

    reason: str


class ResumeTrading(msgspec.Struct, frozen=True):
    """To the supervisor: end the halt (none in force: nothing to do); answered with ControlAnswer."""


# Where the instances that share the work tell one another of a halt or a resume.
INSTANCE_CONTROL_SUBJECT = "execution.control"


class InstanceControl(msgspec.Struct, frozen=True, kw_only=True):
    """A halt (``halt`` true, with its reason, and whether the working orders are cancelled and
    the positions closed too) or a resume, from an operator on one instance, for every other:
    its coordinator publishes it on INSTANCE_CONTROL_SUBJECT and each other coordinator hands it
    to its trees (which record it, as an operator's own would be)."""

    halt: bool
    reason: str = ""
    cancel_resting: bool = False
    flatten: bool = False
    instance: str = ""


class ControlAnswer(msgspec.Struct, frozen=True):
    """The control now in force; ``error`` if it could not be recorded (it is in force anyway,
    but a restart would not know it)."""

    halt: TradingHalt | None
    changed: bool
    error: str | None = None


class RecordControl(msgspec.Struct, frozen=True):
    """To the recorder: write this change now; answered with ControlRecorded."""

    record: ControlRecord


class ControlRecorded(msgspec.Struct, frozen=True):
    version: int
    error: str | None = None


class CancelResting(msgspec.Struct, frozen=True):
    """To the supervisor: cancel every working order (resting at the broker, or a pending
    order on its way there), through the normal cancel path; answered with CancelsSent."""

    reason: str


class CancelsSent(msgspec.Struct, frozen=True):
    order_ids: list[uuid.UUID]


class Flatten(msgspec.Struct, frozen=True):
    """To the supervisor, while halted: close every open position at market; answered with
    Flattening once the close orders are under way."""


class Flattening(msgspec.Struct, frozen=True):
    """The close orders (new, or already under way from this halt), and the positions that
    could not be closed, with why."""

    order_ids: list[uuid.UUID]
    not_closed: list[str]
    error: str | None = None


class GetQuotes(msgspec.Struct, frozen=True):
    """To ingress: its latest quotes of these symbols (refreshed when old); answered with Quotes."""

    symbols: list[str]


class Quotes(msgspec.Struct, frozen=True):
    # symbol -> (bid, ask); a symbol with no quote is missing.
    quotes: dict[str, tuple[float, float]]


class SignalAlert(msgspec.Struct, frozen=True):
    """To ingress: publish this on ``signals.alert`` (the supervisor has no NATS of its own)."""

    kind: str
    detail: str
    signal_id: uuid.UUID | None = None


# --- status -------------------------------------------------------------------------------


def _token() -> str:
    return uuid.uuid4().hex


class GetStatus(msgspec.Struct, frozen=True):
    """To a supervisor (answered with ServiceStatus) or a coordinator (InstanceStatus). The answer
    carries ``asked`` back: Thespian gives an asker whatever reaches it first, which may be the
    late answer to an ask that timed out, and system.ask_for takes only its own."""

    asked: str = msgspec.field(default_factory=_token)


class ServiceStatus(msgspec.Struct, frozen=True, kw_only=True):
    halt: TradingHalt | None
    active_orders: int
    resting_orders: int
    waiting_orders: int
    # Open orders rebuilt from ClickHouse at start, those not yet confirmed with the broker,
    # and how long after the state was loaded the last of them was (None: not yet, or none).
    recovered_orders: int
    reconciling_orders: int
    reconciled_after_s: float | None
    asked: str = ""  # the GetStatus answered


class InstanceStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One instance of several: the partitions it serves, each with its tree's status."""

    instance: str
    partitions: int
    # partition -> its status; a partition taken but whose tree has not answered yet: None.
    serving: dict[int, ServiceStatus | None]
    # partition -> seconds from taking its lease to every order it rebuilt reconciled.
    took_over_s: dict[int, float]
    asked: str = ""  # the GetStatus answered


class CheckServers(msgspec.Struct, frozen=True):
    """To a role with a server connection: is it reachable now? Answered with ServersChecked."""


class ServerCheck(msgspec.Struct, frozen=True):
    server: str  # nats, kafka, clickhouse
    target: str  # where (credentials left out)
    reachable: bool
    detail: str = ""


class ServersChecked(msgspec.Struct, frozen=True):
    role: str
    checks: list[ServerCheck]


class GetLag(msgspec.Struct, frozen=True):
    """To the recorder; answered with SinkLag."""


class SinkLag(msgspec.Struct, frozen=True):
    """Events not yet in ClickHouse, and per sink the recorded events it has not confirmed."""

    to_write: int
    unconfirmed: dict[str, int]
