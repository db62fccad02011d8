"""The simulator's configuration: defaults, then environment, then command-line flags.

Every field ``name`` (fault switches included) is read from ``SIM_NAME`` and ``--name`` (dashes
for underscores). The NATS options (``nats_url``, credentials and TLS: service.credentials'
NatsOptions, as the service has them) and ``stream_prefix`` also fall back to the service's
``EXEC_NATS_URL``, ``EXEC_NATS_USER``, ... / ``EXEC_STREAM_PREFIX``, so both find the same server
and streams. Secrets (``nats_password``, ``nats_token``) are no flags, since ``ps`` shows a
command line: they come from the environment or from the file named by ``SIM_NAME_FILE``
(``EXEC_NAME_FILE``).
"""

from __future__ import annotations

import argparse
import os

import msgspec

from service.credentials import NatsOptions, is_secret, read_secret
from simulator.control import CONTROL_SUBJECT
from simulator.faults import Faults


class SimConfig(NatsOptions, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # Stream names are f"{prefix}_ORDERS" / f"{prefix}_BROKER", as the service names them.
    stream_prefix: str = "EXEC"
    durable: str = "mt5-connector"
    control_subject: str = CONTROL_SUBJECT
    seed: int = 1
    # Random-walk tick period; 0 moves prices only when driven through the control subject.
    tick_ms: float = 250.0
    # Replay ``time,symbol,bid,ask`` rows instead of the random walk, paced by their timestamps.
    ticks_csv: str = ""
    # Replay pace: 2.0 plays twice as fast as recorded, 0 as fast as possible.
    replay_speed: float = 1.0
    depth_step_points: int = 2
    balance: float = 100_000.0
    leverage: float = 100.0
    commission_per_lot: float = 7.0
    # Trading hours "HH:MM-HH:MM" in UTC; empty is always open.
    session: str = ""
    # DAY orders expire at the end of the day; a short day makes that testable.
    day_length_s: float = 86_400.0
    # First ticket/deal number; 0 takes one from the clock, so that a restart without a state
    # file never reuses deal numbers (the service dedups fills by deal).
    ticket_base: int = 0
    # The book and quotes survive a restart when set (written on change, at most every interval).
    state_file: str = ""
    state_interval_s: float = 1.0
    log_level: str = "INFO"
    faults: Faults = Faults()


def _flat_fields() -> list[tuple[str, object]]:
    own = [(f.name, f.default) for f in msgspec.structs.fields(SimConfig) if f.name != "faults"]
    return own + [(f.name, f.default) for f in msgspec.structs.fields(Faults)]


def load_config(argv: list[str] | None = None, env: dict[str, str] | None = None) -> SimConfig:
    env = dict(os.environ if env is None else env)
    parser = argparse.ArgumentParser(prog="python -m simulator", description="The simulated mt5-connector (paper broker).")
    for name, default in _flat_fields():
        if not is_secret(name):
            parser.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None, help=f"default {default!r}; env SIM_{name.upper()}")
    flags = vars(parser.parse_args(argv))
    values: dict[str, object] = {}
    shared = [*(f.name for f in msgspec.structs.fields(NatsOptions)), "stream_prefix"]
    for prefix, names in (("EXEC_", shared), ("SIM_", [name for name, _ in _flat_fields()])):
        for name in names:
            if (raw := env.get(f"{prefix}{name.upper()}")) is not None:
                values[name] = raw
            if is_secret(name) and (path := env.get(f"{prefix}{name.upper()}_FILE")):
                values[name] = read_secret(path)
    values.update({name: flag for name, flag in flags.items() if flag is not None})
    fault_names = {f.name for f in msgspec.structs.fields(Faults)}
    faults = {name: values.pop(name) for name in list(values) if name in fault_names}
    # strict=False lets the strings of the environment and the flags decode into typed fields.
    return msgspec.convert({**values, "faults": faults}, SimConfig, strict=False)
