"""ClickHouse's engine (chdb) behind a minimal implementation of ClickHouse's HTTP interface.

For tests only. No ClickHouse server can be installed on this machine (Debian's
clickhouse-server is too old for clickhouse-connect and nothing else is reachable), so this
lets the code path a server DSN takes (``http://...``: clickhouse-connect's HTTP client, its
request shaping, FORMAT Native over HTTP, URL-bound query parameters, HTTP error handling)
run for real against the same engine embedded chdb runs. It is not a ClickHouse server: only
the subset of the HTTP protocol clickhouse-connect uses is implemented, and some details are
simplified (listed below).

    python tests/clickhouse_http.py --port P --path DIR   (--port 0: any free port)
        [--user NAME --password-file FILE]   (a user of its own instead of ``default``)
        [--tls-cert PEM --tls-key PEM]       (HTTPS, as a server with an https_port)

The first line on stdout is ``listening on HOST:PORT``. SIGTERM or SIGINT stops it.

What it does:
- ``GET /ping`` (and ``GET /`` without a query) answers ``Ok.``.
- The query comes from the ``query`` URL parameter, the request body, or both (as ClickHouse,
  the parameter, a newline, then the body), or from ``multipart/form-data`` fields (``query``,
  ``param_*``), which clickhouse-connect uses for long parameter values. A request body with a
  Content-Encoding clickhouse-connect writes (lz4, zstd, gzip, deflate) is decompressed.
- ``param_<name>`` values are bound by the engine itself (chdb's ``params``), as a server does
  with ``{name:Type}`` placeholders: no substitution into the SQL text here.
- ``INSERT ... FORMAT <fmt>`` followed by data (clickhouse-connect sends Native) is inserted
  from a temporary file (``INSERT ... FROM INFILE``), as clickhouse-connect's chdb backend does.
- ``database`` and every URL parameter that is not an HTTP transport parameter (a ClickHouse
  setting) apply to that one query: ``USE`` / ``SET`` before it, restored after it.
- ``session_id``: one chdb connection per session, so ``SET``, ``USE`` and temporary tables
  persist within it; ``session_check=1`` and concurrent use of a session fail as on a server
  (SESSION_NOT_FOUND, SESSION_IS_LOCKED). Without a session, each request gets a fresh
  connection (chdb connections to one engine are independent).
- The response is the query's output in the format its FORMAT clause names (else
  ``default_format``, else TabSeparated), with X-ClickHouse-Query-Id, -Format (for statements
  that produce a result), -Timezone, -Server-Display-Name and -Summary (read/written rows and
  bytes, elapsed_ns). A failure is HTTP 500 (401 for authentication) with the engine's
  exception text as the body and its code in X-ClickHouse-Exception-Code, from which
  clickhouse-connect raises its usual DatabaseError.
- Authentication: one user, ``default`` with an empty password as on a fresh server unless
  ``--user`` / ``--password-file`` say otherwise (Basic auth, X-ClickHouse-User/Key headers or
  user/password parameters); anything else is AUTHENTICATION_FAILED.
- HTTPS with ``--tls-cert`` / ``--tls-key``: the listening socket is wrapped in TLS.

Simplified or missing, compared with a server:
- The whole response is built before it is sent: no streaming, no progress headers, no
  mid-stream exception tag. Responses are never compressed (``enable_http_compression`` and
  Accept-Encoding are ignored; an uncompressed reply is valid HTTP for clickhouse-connect);
  ClickHouse's own block compression (``compress=1``, ``decompress=1``) fails with
  NOT_IMPLEMENTED.
- ``client_protocol_version`` is ignored, so clickhouse-connect's protocol probe falls back to
  protocol 0 (as it does on embedded chdb).
- External data (file parts of a form) fails with NOT_IMPLEMENTED; query parameters are not
  bound in an INSERT that carries data; GET is not made readonly; sessions never time out.
- Engine errors are all HTTP 500 where a server uses finer statuses (400, 404, ...);
  clickhouse-connect reads the exception code and text, not the status, for those.
- One statement per request, as on a server, but split from its data by a small tokenizer
  (quotes and comments aware), not ClickHouse's parser.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import email.parser
import email.policy
import gzip
import json
import re
import signal
import socket
import ssl
import sys
import tempfile
import threading
import uuid
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import chdb

# URL parameters that belong to the HTTP transport, never passed on as settings.
TRANSPORT_PARAMS = frozenset({
    "query", "database", "default_format", "user", "password", "quota_key", "query_id",
    "session_id", "session_timeout", "session_check", "compress", "decompress", "buffer_size",
    "wait_end_of_query", "client_protocol_version", "role", "enable_http_compression",
    "send_progress_in_http_headers", "http_headers_progress_interval_ms",
})  # fmt: skip

_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CODE = re.compile(r"Code: (\d+)\.")
_TRAILING_FORMAT = re.compile(r"\bFORMAT\s+(\w+)\s*;?\s*$", re.IGNORECASE)
# SQL tokens, enough to find where an INSERT's FORMAT clause ends and its data starts.
_TOKEN = re.compile(
    rb"\s+|--[^\n]*|/\*.*?\*/|'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|`(?:[^`\\]|\\.)*`|[A-Za-z_][A-Za-z0-9_]*|.",
    re.DOTALL,
)
_BINARY_FORMATS = ("Native", "RowBinary", "Parquet", "Arrow", "ArrowStream", "ORC", "Avro", "MsgPack")


class ClickHouseError(Exception):
    """An error as ClickHouse reports it: a code and the exception text."""

    def __init__(self, code: int, text: str, status: int = 500) -> None:
        super().__init__(text)
        self.code = code
        self.text = text
        self.status = status

    @classmethod
    def of(cls, exc: BaseException) -> ClickHouseError:
        if isinstance(exc, ClickHouseError):
            return exc
        message = str(exc)
        start = message.find("Code: ")
        text = message[start:].strip() if start >= 0 else f"Code: 1001. DB::Exception: {message} (STD_EXCEPTION)"
        match = _CODE.search(text)
        return cls(int(match.group(1)) if match else 1001, text)


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _quote_identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def split_insert(sql: bytes) -> tuple[str, str, bytes] | None:
    """(statement without its FORMAT clause, format, data) of ``INSERT ... FORMAT fmt <data>``;
    None for any other statement (including INSERT ... VALUES / SELECT, run as plain SQL)."""
    pos, first = 0, True
    while pos < len(sql):
        match = _TOKEN.match(sql, pos)
        assert match is not None  # the last alternative matches any byte
        token, pos = match.group(), match.end()
        if token[:1].isspace() or token.startswith((b"--", b"/*")):
            continue
        word = token.upper()
        if first:
            if word != b"INSERT":
                return None
            first = False
        elif word in (b"VALUES", b"SELECT", b"WITH", b"INFILE"):
            return None
        elif word == b"FORMAT":
            name = re.compile(rb"\s*([A-Za-z_][A-Za-z0-9_]*)").match(sql, pos)
            if name is None:
                return None
            # As ClickHouse: the data starts after blanks and at most one line break.
            data = re.compile(rb"[ \t\f]*\r?\n?").match(sql, name.end())
            assert data is not None
            return sql[: match.start()].decode(), name.group(1).decode(), sql[data.end() :]
    return None


def decompress(data: bytes, encoding: str | None) -> bytes:
    """A request body in the Content-Encoding clickhouse-connect may write."""
    encoding = (encoding or "").strip().lower()
    if encoding in ("", "identity"):
        return data
    if encoding == "gzip":
        return gzip.decompress(data)
    if encoding == "deflate":
        return zlib.decompress(data)
    if encoding == "lz4":  # one LZ4 frame per block
        import lz4.frame

        parts = []
        while data:
            decompressor = lz4.frame.LZ4FrameDecompressor()
            parts.append(decompressor.decompress(data))
            data = decompressor.unused_data
        return b"".join(parts)
    if encoding == "zstd":
        try:
            from compression import zstd  # type: ignore[import-not-found]
        except ImportError:
            from backports import zstd  # type: ignore[import-not-found,no-redef]
        return zstd.decompress(data)
    raise ClickHouseError(48, f"Code: 48. DB::Exception: Content-Encoding {encoding} is not supported by this test server. (NOT_IMPLEMENTED)")


def parse_form(body: bytes, content_type: str) -> dict[str, str]:
    """The fields of a multipart/form-data body (query and param_* only)."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    fields = {}
    for part in message.iter_parts():
        if part.get_filename() is not None:
            raise ClickHouseError(
                48, "Code: 48. DB::Exception: External data is not supported by this test server. (NOT_IMPLEMENTED)"
            )
        payload = part.get_payload(decode=True)
        fields[part.get_param("name", header="content-disposition")] = payload.decode()
    return fields


class Session:
    def __init__(self, conn: chdb.state.sqlitelike.Connection) -> None:
        self.conn = conn
        self.lock = threading.Lock()


class Engine:
    """chdb on one path: an anchor connection keeps the engine up, sessions get their own."""

    def __init__(self, path: str) -> None:
        self.path = str(Path(path).resolve())
        Path(self.path).mkdir(parents=True, exist_ok=True)
        self.anchor = chdb.connect(self.path)
        version, self.timezone = self.anchor.query("SELECT version(), timezone()", "TSV").bytes().decode().split()
        self.version = version
        self.sessions: dict[str, Session] = {}
        self.lock = threading.Lock()

    def session(self, session_id: str, check: bool) -> Session:
        with self.lock:
            session = self.sessions.get(session_id)
            if session is None:
                if check:
                    raise ClickHouseError(372, f"Code: 372. DB::Exception: Session {session_id} not found. (SESSION_NOT_FOUND)")
                session = self.sessions[session_id] = Session(chdb.connect(self.path))
            return session

    def close(self) -> None:
        with self.lock:
            for session in self.sessions.values():
                session.conn.close()
            self.sessions.clear()
            self.anchor.close()


def _scalar(conn: chdb.state.sqlitelike.Connection, sql: str) -> str:
    return conn.query(sql, "TSV").bytes().decode().rstrip("\n")


def execute(
    conn: chdb.state.sqlitelike.Connection,
    sql: bytes,
    params: dict[str, str],
    settings: dict[str, str],
    database: str | None,
    default_format: str,
    restore: bool,
) -> tuple[bytes, str | None, dict[str, str]]:
    """Run one statement on ``conn`` with the request's settings and database applied for it
    (and, on a session's connection, restored after it): (body, result format, summary)."""
    saved_settings: list[tuple[str, str, bool]] = []
    saved_database = None
    if restore and settings:
        names = ", ".join(_quote(name) for name in settings)
        rows = conn.query(f"SELECT name, value, changed FROM system.settings WHERE name IN ({names})", "JSONEachRow")
        saved_settings = [(r["name"], r["value"], bool(r["changed"])) for r in map(json.loads, rows.bytes().splitlines())]
    try:
        if database:
            if restore:
                saved_database = _scalar(conn, "SELECT currentDatabase()")
            conn.query(f"USE {_quote_identifier(database)}", "TSV")
        # A server checks a request's settings against those in force before it, so the
        # request's own readonly binds its query, not its other settings: readonly goes last.
        for name, value in sorted(settings.items(), key=lambda setting: setting[0] == "readonly"):
            if not _SETTING_NAME.match(name):
                raise ClickHouseError(115, f"Code: 115. DB::Exception: Unknown setting '{name}'. (UNKNOWN_SETTING)")
            conn.query(f"SET {name} = {_quote(value)}", "TSV")
        return _run(conn, sql, params, default_format)
    finally:
        for name, value, changed in saved_settings:
            literal = value if len(value) >= 2 and value[0] == value[-1] == "'" else _quote(value)
            with contextlib.suppress(Exception):  # e.g. readonly, set by the query itself
                conn.query(f"SET {name} = {literal if changed else 'DEFAULT'}", "TSV")
        # The request's database applies to this query only, unless the query was a USE.
        if saved_database is not None and saved_database != database and _scalar(conn, "SELECT currentDatabase()") == database:
            conn.query(f"USE {_quote_identifier(saved_database)}", "TSV")


def _run(conn: chdb.state.sqlitelike.Connection, sql: bytes, params: dict[str, str], default_format: str):
    insert = split_insert(sql)
    if insert is not None:
        statement, fmt, data = insert
        # From a file, as clickhouse-connect's own chdb backend inserts: chdb 4.4's streaming
        # insert (send_insert) drops a block that breaks a table's CONSTRAINT without an error.
        with tempfile.NamedTemporaryFile(suffix=".insert") as source:
            source.write(data)
            source.flush()
            result = conn.query(f"{statement} FROM INFILE {_quote(source.name)} FORMAT {fmt}", "TSV")
        summary = {"written_rows": result.rows_written(), "written_bytes": result.bytes_written()}
        return b"", None, _summary(summary, result.elapsed())
    try:
        text = sql.decode()
    except UnicodeDecodeError:
        raise ClickHouseError(62, "Code: 62. DB::Exception: The query is not valid UTF-8. (SYNTAX_ERROR)") from None
    explicit = _TRAILING_FORMAT.search(text)
    fmt = explicit.group(1) if explicit else default_format
    if explicit is None and fmt in ("TabSeparated", "TSV"):
        # A statement without a result (DDL, INSERT ... VALUES) has no output format on a
        # server; with names, a result always has at least its header line, so tell them apart.
        result = conn.query(text, "TabSeparatedWithNames", params=params)
        body = result.bytes() or b""
        has_result = bool(body)
        body = body.split(b"\n", 1)[1] if has_result else b""
    else:
        result = conn.query(text, fmt, params=params)
        body, has_result = result.bytes() or b"", True
    summary = {
        "read_rows": result.rows_read(), "read_bytes": result.bytes_read(),
        "written_rows": result.rows_written(), "written_bytes": result.bytes_written(),
    }  # fmt: skip
    return body, fmt if has_result else None, _summary(summary, result.elapsed())


def _summary(values: dict[str, int], elapsed_s: float) -> dict[str, str]:
    base = dict.fromkeys(("read_rows", "read_bytes", "written_rows", "written_bytes", "total_rows_to_read"), 0)
    base.update(values)
    base["elapsed_ns"] = int(elapsed_s * 1e9)
    return {key: str(value) for key, value in base.items()}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as clickhouse-connect's pooled connections expect
    server: Server

    def log_message(self, format: str, *args: object) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self) -> None:
        engine = self.server.engine
        url = urlsplit(self.path)
        raw_body = self._read_body()  # always, so a keep-alive connection stays in step
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        query_id = params.get("query_id") or str(uuid.uuid4())
        headers = {"X-ClickHouse-Server-Display-Name": self.server.display_name, "X-ClickHouse-Query-Id": query_id}
        if url.path == "/ping" or (url.path == "/" and self.command == "GET" and "query" not in params and not raw_body):
            self._reply(200, b"Ok.\n", {"Content-Type": "text/html; charset=UTF-8"})
            return
        if url.path != "/":
            self._reply(404, b"There is no handle " + url.path.encode() + b"\n", {"Content-Type": "text/plain; charset=UTF-8"})
            return
        session: Session | None = None
        try:
            body = decompress(raw_body, self.headers.get("Content-Encoding"))
            content_type = self.headers.get("Content-Type", "")
            if content_type.startswith("multipart/form-data"):
                params.update(parse_form(body, content_type))
                body = b""
            self._authenticate(params)
            for name in ("compress", "decompress"):  # ClickHouse's own block compression
                if params.get(name, "0") not in ("", "0"):
                    raise ClickHouseError(
                        48, f"Code: 48. DB::Exception: {name}=1 is not supported by this test server. (NOT_IMPLEMENTED)"
                    )
            query = params.get("query", "")
            sql = (query.encode() + b"\n" if query else b"") + body
            bind = {name[6:]: value for name, value in params.items() if name.startswith("param_")}
            settings = {k: v for k, v in params.items() if k not in TRANSPORT_PARAMS and not k.startswith("param_")}
            session_id = params.get("session_id")
            if session_id:
                session = engine.session(session_id, params.get("session_check") == "1")
                if not session.lock.acquire(blocking=False):
                    session = None
                    raise ClickHouseError(
                        373, f"Code: 373. DB::Exception: Session {session_id} is locked by a concurrent client. (SESSION_IS_LOCKED)"
                    )
                conn = session.conn
            else:
                conn = chdb.connect(engine.path)
            try:
                out, fmt, summary = execute(
                    conn, sql, bind, settings, params.get("database"),
                    params.get("default_format") or "TabSeparated", restore=session is not None,
                )  # fmt: skip
            finally:
                if session is None:
                    conn.close()
        except Exception as exc:  # noqa: BLE001  every failure is reported as ClickHouse reports it
            error = ClickHouseError.of(exc)
            headers.update({"Content-Type": "text/plain; charset=UTF-8", "X-ClickHouse-Exception-Code": str(error.code)})
            text = f"{error.text} (version {engine.version})\n"
            self._reply(error.status, text.encode(), headers)
            return
        finally:
            if session is not None:
                session.lock.release()
        headers["X-ClickHouse-Timezone"] = settings.get("session_timezone") or engine.timezone
        headers["X-ClickHouse-Summary"] = json.dumps(summary, separators=(",", ":"))
        if fmt is not None:
            headers["X-ClickHouse-Format"] = fmt
            binary = fmt in _BINARY_FORMATS
            headers["Content-Type"] = "application/octet-stream" if binary else "text/plain; charset=UTF-8"
        else:
            headers["Content-Type"] = "text/plain; charset=UTF-8"
        self._reply(200, out, headers)

    def _authenticate(self, params: dict[str, str]) -> None:
        user, password = params.get("user", "default"), params.get("password", "")
        authorization = self.headers.get("Authorization", "")
        if authorization.startswith("Basic "):
            user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
        elif authorization:
            user, password = "", "?"
        user = self.headers.get("X-ClickHouse-User", user)
        password = self.headers.get("X-ClickHouse-Key", password)
        if (user, password) != (self.server.user, self.server.password):
            raise ClickHouseError(
                516,
                f"Code: 516. DB::Exception: {user}: Authentication failed: password is incorrect, "
                "or there is no user with such name. (AUTHENTICATION_FAILED)",
                status=401,
            )


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], engine: Engine, verbose: bool, user: str = "default", password: str = "") -> None:
        super().__init__(address, Handler)
        self.engine = engine
        self.verbose = verbose
        self.user = user
        self.password = password
        self.display_name = socket.gethostname()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="0 picks a free port")
    parser.add_argument("--path", required=True, help="chdb's data directory")
    parser.add_argument("--verbose", action="store_true", help="log every request on stderr")
    parser.add_argument("--user", default="default")
    parser.add_argument("--password-file", help="the user's password (default: empty)")
    parser.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM)")
    parser.add_argument("--tls-key", help="and this key (PEM)")
    args = parser.parse_args(argv)
    password = Path(args.password_file).read_text().rstrip("\r\n") if args.password_file else ""
    engine = Engine(args.path)
    server = Server((args.host, args.port), engine, args.verbose, args.user, password)
    if args.tls_cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    # serve_forever runs on this thread, so shutdown() must come from another one.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"listening on {args.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        engine.close()


if __name__ == "__main__":
    sys.exit(main())
