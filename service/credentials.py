"""Credentials and TLS for the NATS and ClickHouse connections, kept out of every log line.

Secrets are settings whose names end in ``password`` or ``token``. The settings' repr masks
them and shows URLs without their userinfo, so a settings object in a log line, an exception
or a Thespian message dump gives nothing away. Each secret may also come from a file
(``<name>_file``: a mounted secret), so that it need not sit in the environment or the config.

The service (``service.config.Settings``) and the simulator (``simulator.config.SimConfig``)
share :class:`NatsOptions`, so both accept the same NATS options and connect the same way.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgspec

SECRET_SUFFIXES = ("password", "token")
MASK = "***"


def is_secret(name: str) -> bool:
    return name.endswith(SECRET_SUFFIXES)


def redact_url(url: str) -> str:
    """``url`` without its ``user:password@`` (NATS and ClickHouse URLs may carry them)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=f"{MASK}@{parts.netloc.rpartition('@')[2]}"))


def read_secret(path: str) -> str:
    """A secret kept in a file: its content without the final newline editors add."""
    return Path(path).read_text().rstrip("\r\n")


class Redacted(msgspec.Struct, frozen=True, kw_only=True):
    """A struct whose repr masks its secrets and the userinfo of its URLs."""

    def __rich_repr__(self) -> Iterator[tuple[str, object]]:
        for field in msgspec.structs.fields(self):
            value = getattr(self, field.name)
            if is_secret(field.name) and value:
                value = MASK
            elif isinstance(value, str) and "://" in value:
                value = redact_url(value)
            yield field.name, value

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{name}={value!r}' for name, value in self.__rich_repr__())})"


class NatsOptions(Redacted, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where NATS is and how to log in: at most one of user and password, a token or a .creds
    file (JWT and NKey seed); TLS with a CA file (a private CA), a client certificate and key
    when the server verifies clients. nats-py turns TLS on when the server requires it (its
    INFO says so); these options and a ``tls://`` URL only configure it."""

    nats_url: str = "nats://127.0.0.1:4222"
    nats_user: str = ""
    nats_password: str = ""
    nats_token: str = ""
    nats_creds_file: str = ""
    nats_tls_ca_file: str = ""
    nats_tls_cert_file: str = ""
    nats_tls_key_file: str = ""

    def __post_init__(self) -> None:
        kinds = [kind for kind, given in (("user", self.nats_user), ("token", self.nats_token), ("creds file", self.nats_creds_file)) if given]
        if len(kinds) > 1:
            raise ValueError(f"NATS credentials: give one of user and password, a token or a creds file, not {' and '.join(kinds)}")
        if self.nats_password and not self.nats_user:
            raise ValueError("NATS credentials: a password without a user")

    @property
    def nats_server(self) -> str:
        """The URL as it may be logged."""
        return redact_url(self.nats_url)

    def nats_environment(self) -> dict[str, str]:
        """These options as ``EXEC_NATS_*`` variables, for a child process (the simulator):
        in its environment, not on its command line, where ``ps`` would show them."""
        return {f"EXEC_{field.name.upper()}": getattr(self, field.name) for field in msgspec.structs.fields(NatsOptions)}

    def nats_connect_options(self) -> dict[str, Any]:
        """``nats.connect``'s keyword arguments for the credentials and TLS set here."""
        options: dict[str, Any] = {}
        if self.nats_user:
            options.update(user=self.nats_user, password=self.nats_password)
        if self.nats_token:
            options["token"] = self.nats_token
        if self.nats_creds_file:
            options["user_credentials"] = self.nats_creds_file
        if self.nats_tls_ca_file or self.nats_tls_cert_file or self.nats_url.startswith("tls://"):
            context = ssl.create_default_context(cafile=self.nats_tls_ca_file or None)
            if self.nats_tls_cert_file:
                context.load_cert_chain(self.nats_tls_cert_file, self.nats_tls_key_file or None)
            options["tls"] = context
        return options
