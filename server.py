"""Safe, read-only access to a SQLite or PostgreSQL database and a folder of JSON files for AI assistants.

One FastMCP server exposes:
  tools      query_database, ask_database, list_tables, describe_table, read_json, list_files
  resources  config://app/settings, schema://tables, schema://tables/{table}

The database engine itself enforces read-only (SQLite: a `mode=ro` connection, `PRAGMA query_only`
and an authorizer that allows nothing but reading; PostgreSQL: one statement per call in a READ ONLY
transaction that is always rolled back); every file path is confined to the files root; every call is
bounded in time and size. With nothing configured it serves a small built-in demo.

Usage:
    uv run server.py                                     # stdio, on the demo data
    uv run pytest                                        # the tests
    uv run server.py --transport http --port 8000        # streamable HTTP on 127.0.0.1
    MCP_DB_PATH=~/data/shop.db MCP_FILES_ROOT=~/data uv run fastmcp run server.py
    DATABASE_URL=postgresql://reader@localhost/shop uv run --extra postgres server.py --transport http --stateless
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gc
import hashlib
import hmac
import ipaddress
import itertools
import json
import logging
import math
import os
import random
import re
import secrets
import shutil
import sqlite3
import stat
import sys
import tempfile
import threading
import time
import urllib.parse
import warnings
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
from fastmcp import Context, FastMCP
from fastmcp.exceptions import ResourceError, ToolError
from fastmcp.server.auth.providers.debug import DebugTokenVerifier
from fastmcp.server.middleware.rate_limiting import RateLimitingMiddleware
from fastmcp.tools import ToolResult
from fastmcp.utilities.json_schema import compress_schema
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from mcp_types import ResourceTemplateReference, SamplingMessage, TextContent, ToolAnnotations
from pydantic import (
    AliasChoices,
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger("safe_data")
# Sampling (ask_database) and logging to the client are deprecated by the 2026-07-28 protocol but
# still offered by the earlier revisions most clients speak; the server uses them knowingly.
warnings.filterwarnings("ignore", "The (sampling|logging) capability is deprecated", MCPDeprecationWarning)

# --- Constants ---------------------------------------------------------------------------------

SERVER_NAME = "safe-data"
SERVER_VERSION = "0.1.0"
MAX_ROWS_LIMIT = 100_000  # the most any one page may hold, whatever the settings say
MAX_CELL_CHARS = 10_000  # a longer text cell is cut (with a marker) so one value cannot flood a reply
MAX_RESULT_BYTES = 4 * 1024 * 1024  # a page's cell data stops here: a reply (two copies) stays near 8 MiB
MAX_SQL_CHARS = 100_000  # SQLITE_LIMIT_SQL_LENGTH: legitimate questions are far shorter
MAX_SQLITE_HEAP_BYTES = 512 * 1024 * 1024  # SQLite's own memory, process-wide: a runaway query fails instead
MAX_VALUE_BYTES = 16 * 1024 * 1024  # SQLITE_LIMIT_LENGTH: no string or blob built in a query beyond this
MAX_PARAMS = 999  # SQLITE_LIMIT_VARIABLE_NUMBER, the historical SQLite default
MAX_PATH_CHARS = 4096  # PATH_MAX on Linux; longer paths cannot name a real file anyway
MAX_JSON_DEPTH = 200  # deeper documents are refused: they only serve to exhaust recursion
MAX_LIST_ENTRIES = 1000  # list_files and list_tables stop here and say so with `truncated`
CURSOR_TTL_S = 600  # a page cursor lives ten minutes: long enough to read on, short enough to forget
PROGRESS_EVERY_S = 1.0  # a query that runs this long starts reporting progress
BUSY_TIMEOUT_S = 1.0  # wait at most this long for another process's write lock before saying so

ACTION_NAMES = {  # SQLite authorizer action codes, for messages that name what was refused
    getattr(sqlite3, f"SQLITE_{name}"): name.replace("_", " ")
    for name in (
        "CREATE_INDEX CREATE_TABLE CREATE_TEMP_INDEX CREATE_TEMP_TABLE CREATE_TEMP_TRIGGER CREATE_TEMP_VIEW"
        " CREATE_TRIGGER CREATE_VIEW DELETE DROP_INDEX DROP_TABLE DROP_TEMP_INDEX DROP_TEMP_TABLE"
        " DROP_TEMP_TRIGGER DROP_TEMP_VIEW DROP_TRIGGER DROP_VIEW INSERT PRAGMA READ SELECT TRANSACTION"
        " UPDATE ATTACH DETACH ALTER_TABLE REINDEX ANALYZE CREATE_VTABLE DROP_VTABLE FUNCTION SAVEPOINT"
        " RECURSIVE"
    ).split()
}
# PRAGMAs that only report; any other PRAGMA (and any of these given a value to set) is refused.
REPORTING_PRAGMAS = {
    "table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo",
    "foreign_key_list", "collation_list", "function_list", "module_list", "pragma_list",
    "compile_options", "data_version", "page_count", "page_size", "freelist_count", "encoding",
    "user_version", "application_id", "schema_version",
}  # fmt: skip
SETTABLE_PRAGMAS = {"page_size", "encoding", "user_version", "application_id", "schema_version"}
WRITE_ACTIONS = {sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE}
REFUSED_FUNCTIONS = {"load_extension", "fts3_tokenizer"}  # native code and raw pointers


# --- Settings ----------------------------------------------------------------------------------


class Settings(BaseSettings):
    """Everything a deployment can change, read from `MCP_*` environment variables."""

    model_config = SettingsConfigDict(env_prefix="MCP_", extra="forbid")

    db_path: Path | None = Field(None, description="SQLite database to serve (demo when unset)")
    files_root: Path | None = Field(None, description="Folder of JSON files (demo when unset)")
    max_rows: int = Field(1000, ge=1, le=MAX_ROWS_LIMIT, description="Rows per page by default")
    query_timeout_ms: int = Field(5000, ge=10, le=600_000, description="Deadline of every call")
    max_file_bytes: int = Field(10 * 1024 * 1024, ge=1, le=256 * 1024**2, description="Largest JSON file")
    mask_error_details: bool = Field(True, description="Hide internal error details from clients")
    rate_limit: str | None = Field(None, description="Requests per period, like 100/hour")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO", description="Log level, to stderr"
    )
    auth_token: SecretStr | None = Field(None, description="Bearer token required over HTTP")
    cursor_secret: SecretStr | None = Field(None, description="Key that signs page cursors")
    database_url: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("database_url", "MCP_DATABASE_URL", "DATABASE_URL"),  # MCP_ name first
        description="postgresql:// URL to serve PostgreSQL instead of SQLite (also read from DATABASE_URL)",
    )
    pool_size: int = Field(5, ge=1, le=100, description="PostgreSQL connections per server process")

    @field_validator("db_path")
    @classmethod
    def _db_must_exist(cls, path: Path | None) -> Path | None:
        if path is None:
            return None
        path = path.expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"{path} is not an existing file (the server never creates one)")
        return path

    @field_validator("files_root")
    @classmethod
    def _root_must_be_folder(cls, path: Path | None) -> Path | None:
        if path is None:
            return None
        path = path.expanduser().resolve()
        if not path.is_dir():
            raise ValueError(f"{path} is not an existing folder")
        return path

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, url: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if url is None or not url.get_secret_value():
            return None
        if not url.get_secret_value().startswith(("postgresql://", "postgres://")):
            raise ValueError("only postgresql:// URLs are supported; for SQLite set MCP_DB_PATH instead")
        if info.data.get("db_path"):
            raise ValueError("set MCP_DB_PATH (SQLite) or DATABASE_URL (PostgreSQL), not both")
        return url

    @field_validator("rate_limit")
    @classmethod
    def _rate_limit_parses(cls, value: str | None) -> str | None:
        if value:
            parse_rate_limit(value)
        return value or None

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    def public_view(self) -> dict[str, Any]:
        """The effective settings, with each secret shown only as set or unset."""
        view = self.model_dump(mode="json")
        for name in ("auth_token", "cursor_secret", "database_url"):
            view[name] = "set" if getattr(self, name) else "unset"
        return view


def load_settings(**overrides: Any) -> Settings:
    """Read the settings, or stop with one line naming the variable and the problem."""
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else "?"
        message = str(error["msg"]).removeprefix("Value error, ")
        raise SystemExit(f"{SERVER_NAME}: bad setting MCP_{field.upper()}: {message}") from None


def parse_rate_limit(text: str) -> tuple[int, float]:
    """'100/hour' -> (100 requests, 3600 seconds)."""
    periods = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(second|minute|hour|day)s?\s*", text, re.IGNORECASE)
    if not match or int(match[1]) < 1:
        raise ValueError(f"{text!r} is not COUNT/PERIOD with PERIOD one of {', '.join(periods)}")
    return int(match[1]), float(periods[match[2].lower()])


# --- Result models -----------------------------------------------------------------------------


# A row's schema says "array" and stops: the `"items": {}` pydantic adds allows anything anyway, and
# clients that validate results (the MCP Python SDK does) would check it once per cell, which took
# longer than the query itself for 10,000 rows.
Row = Annotated[list[Any], WithJsonSchema({"type": "array"})]


class QueryResult(BaseModel):
    """One page of a query's rows."""

    columns: list[str] = Field(description="Column names, in order")
    rows: list[Row] = Field(
        description="Rows as lists of values in column order. BLOBs are "
        '{"$blob": base64, "bytes": N}; NaN and infinities are the strings "NaN", "Infinity" and '
        '"-Infinity"; text longer than the cell limit ends with "…[N chars]".'
    )
    row_count: int = Field(description="Rows in this page")
    truncated: bool = Field(description="True when more rows remain: pass next_cursor to continue")
    next_cursor: str | None = Field(None, description="Cursor for the next page, when truncated")
    elapsed_ms: float = Field(description="Time the database spent on this page")


class AskResult(BaseModel):
    """A question answered by one SQL statement that the client's model wrote."""

    question: str
    sql: str = Field(description="The statement that was run, read-only like every other")
    result: QueryResult


class TableSummary(BaseModel):
    name: str
    type: Literal["table", "view"]
    row_count: int | None = Field(description="None when counting took longer than the deadline")


class TableList(BaseModel):
    tables: list[TableSummary]
    truncated: bool = Field(False, description="True when there are more tables than one answer lists")


class ColumnInfo(BaseModel):
    name: str
    type: str = Field(description="Declared type, empty when none was declared")
    nullable: bool
    default: str | None = Field(description="Default value as SQL text")
    primary_key: int = Field(description="1-based position in the primary key, 0 when not part")


class ForeignKey(BaseModel):
    columns: list[str]
    references_table: str
    references_columns: list[str]


class IndexInfo(BaseModel):
    name: str
    columns: list[str]
    unique: bool


class TableDescription(BaseModel):
    name: str
    type: Literal["table", "view"]
    columns: list[ColumnInfo]
    foreign_keys: list[ForeignKey]
    indexes: list[IndexInfo]
    row_count: int | None
    create_sql: str | None


class JsonDocument(BaseModel):
    path: str = Field(description="Path of the file, relative to the files root")
    pointer: str | None = Field(description="The JSON Pointer that selected `value`, if any")
    value: Any = Field(description="The document, or the part the pointer selected")


class FileEntry(BaseModel):
    path: str = Field(description="Path relative to the files root, with / separators")
    kind: Literal["file", "directory", "symlink", "other"]
    size: int | None = Field(description="Bytes, for regular files")
    modified: str = Field(description="Last modification, ISO 8601 in UTC")


class FileList(BaseModel):
    entries: list[FileEntry]
    truncated: bool = Field(description="True when the listing stopped at its entry or time limit")


# --- SQL: the read-only SQLite engine ----------------------------------------------------------


class QueryRefused(Exception):
    """A statement the caller can fix: refused, malformed, too slow or otherwise unanswerable."""


class Deadline:
    """A point in time after which work stops, or earlier when `stop` is set (a cancelled call)."""

    def __init__(self, seconds: float, stop: threading.Event | None = None):
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self.stop = stop or threading.Event()

    def passed(self) -> bool:
        return self.stop.is_set() or time.monotonic() > self.at


class SQLiteDatabase:
    """The one place that knows SQLite: opens read-only connections and runs single statements.

    Every call opens its own short-lived connection in the calling worker thread, so no
    connection is ever shared between threads, a replaced database file is picked up at once,
    and a cancelled call frees everything it held.
    """

    dialect = "SQLite"

    def __init__(self, path: Path):
        self.path = path

    def close(self) -> None:
        """Nothing to close: every call closes its own connection."""

    @contextlib.contextmanager
    def _session(self, deadline: Deadline) -> Iterator[tuple[sqlite3.Connection, list[str]]]:
        """A guarded read-only connection for one call, always closed. A driver error (a locked,
        corrupt or unreadable file, a refused statement, the deadline) becomes a clear QueryRefused;
        `refusals` collects what the authorizer denied, so the message can name it."""
        if not self.path.is_file():
            raise QueryRefused(f"the database file {self.path.name} is missing; restore it")
        refusals: list[str] = []
        conn = None
        try:
            uri = f"file:{urllib.parse.quote(self.path.as_posix())}?mode=ro"  # a '?' or '#' stays in the name
            conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            conn.text_factory = lambda raw: raw.decode("utf-8", "replace")  # bad UTF-8 is not a crash
            conn.execute("PRAGMA query_only = ON")
            # SQLite's memory has a ceiling. A sort larger than its cache spills to an anonymous temporary
            # file (unlinked as it opens); that is kept, because an in-memory sort cannot be interrupted
            # and would outlive the deadline, while spilling lets the progress handler stop it in time.
            conn.execute(f"PRAGMA hard_heap_limit = {MAX_SQLITE_HEAP_BYTES}")
            for limit, value in (
                (sqlite3.SQLITE_LIMIT_ATTACHED, 0),
                (sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES),
                (sqlite3.SQLITE_LIMIT_SQL_LENGTH, MAX_SQL_CHARS),
                (sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, MAX_PARAMS),
            ):
                conn.setlimit(limit, value)
            conn.set_authorizer(partial(_authorize, refusals))
            conn.set_progress_handler(lambda: deadline.passed(), 1000)
            yield conn, refusals
        except (sqlite3.Error, MemoryError) as exc:
            raise _explain(exc, refusals, deadline) from None
        finally:
            if conn is not None:
                conn.close()

    def execute(
        self, sql: str, params: list | dict | None, max_rows: int, skip: int, deadline: Deadline
    ) -> tuple[list[str], list[list[Any]], bool, str]:
        """Run one read-only statement: columns, up to `max_rows` rows after `skip`, whether more
        remain, and the data version read just before (what a page cursor must find unchanged)."""
        version = self.fingerprint()
        with self._session(deadline) as (conn, refusals):
            try:
                cursor = conn.execute(sql, params if params is not None else ())
            except (OverflowError, UnicodeEncodeError, ValueError) as exc:  # values Python cannot bind
                raise _explain(exc, refusals, deadline) from None
            columns = [d[0] for d in cursor.description or ()]
            if skip:
                _discard(cursor, skip)
            rows, more = _fetch_page(cursor, max_rows)
        if not columns:
            raise QueryRefused("the statement returned no columns: only queries are allowed")
        return columns, rows, more, version

    def fingerprint(self) -> str:
        """Changes whenever the database file (or its write-ahead log) does."""
        parts = []
        for suffix in ("", "-wal"):
            try:
                st = os.stat(f"{self.path}{suffix}")
                parts.append(f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}")
            except FileNotFoundError:
                parts.append("-")
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]

    # Introspection runs through the same guarded connection, with parameters, never pasted names.

    def _objects(self, conn: sqlite3.Connection) -> list[tuple[str, str, str | None]]:
        return conn.execute(
            "SELECT name, type, sql FROM sqlite_schema WHERE type IN ('table', 'view')"
            " AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name"
        ).fetchall()

    def table_names(self, deadline: Deadline) -> list[str]:
        with self._session(deadline) as (conn, _):
            return [name for name, _, _ in self._objects(conn)]

    def _row_count(self, conn: sqlite3.Connection, name: str, deadline: Deadline) -> int | None:
        if deadline.passed():
            return None
        try:
            return conn.execute(f"SELECT count(*) FROM {quote_identifier(name)}").fetchone()[0]
        except sqlite3.OperationalError:
            return None  # interrupted by the deadline, or a view that cannot be evaluated

    def schema_sql(self, deadline: Deadline) -> str:
        """The CREATE statements, for a model that is asked to write SQL against them."""
        with self._session(deadline) as (conn, _):
            return "\n".join(sql for _, _, sql in self._objects(conn) if sql)[:20_000]

    def list_tables(self, deadline: Deadline) -> list[TableSummary]:
        with self._session(deadline) as (conn, _):
            return [
                TableSummary(name=name, type=kind, row_count=self._row_count(conn, name, deadline))
                for name, kind, _ in self._objects(conn)
            ]

    def describe_table(self, name: str, deadline: Deadline) -> TableDescription:
        with self._session(deadline) as (conn, _):
            objects = {obj[0]: obj for obj in self._objects(conn)}
            if name not in objects:
                known = ", ".join(list(objects)[:100]) or "none"
                raise QueryRefused(f"no table or view named {name!r}; the tables are: {known}")
            _, kind, create_sql = objects[name]
            columns = [
                ColumnInfo(name=c, type=t, nullable=not nn, default=d, primary_key=pk)
                for _, c, t, nn, d, pk in conn.execute(
                    'SELECT cid, name, type, "notnull", dflt_value, pk FROM pragma_table_info(?)',
                    (name,),
                )
            ]
            foreign_keys: dict[int, ForeignKey] = {}
            for fk_id, _, target, source, dest in conn.execute(
                'SELECT id, seq, "table", "from", "to" FROM pragma_foreign_key_list(?) ORDER BY id, seq',
                (name,),
            ):
                fk = foreign_keys.setdefault(
                    fk_id, ForeignKey(columns=[], references_table=target, references_columns=[])
                )
                fk.columns.append(source)
                fk.references_columns.append(dest or "")
            indexes = [
                IndexInfo(
                    name=index,
                    unique=bool(unique),
                    columns=[
                        col or "<expression>"
                        for (col,) in conn.execute("SELECT name FROM pragma_index_info(?) ORDER BY seqno", (index,))
                    ],
                )
                for index, unique in conn.execute('SELECT name, "unique" FROM pragma_index_list(?)', (name,))
            ]
            return TableDescription(
                name=name,
                type=kind,
                columns=columns,
                foreign_keys=list(foreign_keys.values()),
                indexes=indexes,
                row_count=self._row_count(conn, name, deadline),
                create_sql=create_sql,
            )


def _authorize(refusals: list[str], action: int, arg1: str | None, arg2: str | None, *_: Any) -> int:
    """Allow reading and nothing else; note what was refused so the error can name it."""
    if action in (sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_RECURSIVE):
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_FUNCTION and arg2 not in REFUSED_FUNCTIONS:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA:
        name = (arg1 or "").lower()
        if name in REPORTING_PRAGMAS and not (name in SETTABLE_PRAGMAS and arg2 is not None):
            return sqlite3.SQLITE_OK
    if action in WRITE_ACTIONS and arg1 in ("sqlite_master", "sqlite_temp_master"):
        # SQLite's own bookkeeping: the nested parse when a pragma_* table function is first used,
        # and the schema-row edit behind every DDL verb. The verb itself (CREATE/DROP/...) has its
        # own action code and is refused; a direct write to sqlite_master is refused by SQLite,
        # and the connection is read-only three times over (mode=ro, query_only, no writable_schema).
        return sqlite3.SQLITE_OK
    refusals.append(_refusal_reason(action, arg1, arg2))
    return sqlite3.SQLITE_DENY


def _refusal_reason(action: int, arg1: str | None, arg2: str | None) -> str:
    if action == sqlite3.SQLITE_FUNCTION:
        return f"{arg2}() is not available (it loads native code or exposes memory)"
    if action == sqlite3.SQLITE_ATTACH:
        return "ATTACH and VACUUM INTO open or create other database files"
    if action == sqlite3.SQLITE_PRAGMA:
        return f"PRAGMA {arg1} can change the database or the connection's protections"
    if action in (sqlite3.SQLITE_TRANSACTION, sqlite3.SQLITE_SAVEPOINT):
        return "transaction control is not available: every call is its own read"
    what = ACTION_NAMES.get(action, f"action {action}")
    return f"{what}{' on ' + arg1 if arg1 else ''} modifies the database"


def _explain(exc: Exception, refusals: list[str], deadline: Deadline) -> QueryRefused:
    """Turn a driver error into a message that says what was wrong and what to do instead."""
    text = str(exc)
    if refusals:
        return QueryRefused(f"only read-only statements are allowed: {refusals[0]}; this server can only read")
    if "interrupted" in text:
        if deadline.stop.is_set():
            return QueryRefused("the query was cancelled")
        return QueryRefused(
            f"the query ran past its {deadline.seconds * 1000:.0f} ms deadline and was stopped;"
            " narrow it with WHERE or LIMIT"
        )
    if isinstance(exc, MemoryError) or "too big" in text:  # SQLite's heap ceiling, or a value past its limit
        return QueryRefused(
            f"the query needs more memory than this server allows ({MAX_SQLITE_HEAP_BYTES // 2**20} MiB for"
            f" SQLite, {MAX_VALUE_BYTES // 2**20} MiB per value); narrow it or select fewer, smaller columns"
        )
    if "one statement at a time" in text:
        return QueryRefused("send exactly one SQL statement per call")
    if "locked" in text or "busy" in text:
        return QueryRefused("the database is locked by another process's write; try again shortly")
    if "readonly" in text or "read-only" in text:
        return QueryRefused("only read-only statements are allowed: this statement writes")
    if isinstance(exc, OverflowError):
        return QueryRefused("a parameter is too large: integers must fit in 64 bits")
    if isinstance(exc, UnicodeEncodeError):
        return QueryRefused("the query or a parameter is not valid Unicode text (lone surrogate?)")
    if isinstance(exc, sqlite3.ProgrammingError) and "binding" in text.lower():
        return QueryRefused(f"parameters do not match the query: {text}")
    return QueryRefused(f"SQLite said: {text}")


def _discard(cursor: sqlite3.Cursor, count: int) -> None:
    """Step past the rows earlier pages returned, a few at a time: each row is dropped at once."""
    while count > 0:
        chunk = cursor.fetchmany(min(count, 64))
        if not chunk:
            return
        count -= len(chunk)


def _fetch_page(cursor: sqlite3.Cursor, max_rows: int) -> tuple[list[list[Any]], bool]:
    """Up to `max_rows` JSON-ready rows, streamed in chunks, and whether more remain."""
    rows: list[list[Any]] = []
    budget = MAX_RESULT_BYTES
    batch = 8  # grows while rows are small, back to one after a large one, so few big rows are ever held
    while len(rows) < max_rows:
        chunk = cursor.fetchmany(min(batch, max_rows - len(rows)))
        if not chunk:
            return rows, False
        size = _plain_size(chunk)
        if size is not None and size <= budget:  # the usual chunk: JSON-ready as fetched, one scan
            budget -= size
            rows.extend(map(list, chunk))
            batch = min(batch * 2, 512)
            continue
        batch = 1
        for index, raw in enumerate(chunk):
            row = [_cell(value) for value in raw]
            budget -= sum(map(_cost, row))
            rows.append(row)
            if budget < 0:  # a page is bounded in bytes as well as rows
                return rows, index + 1 < len(chunk) or cursor.fetchone() is not None
    return rows, cursor.fetchone() is not None


def _cost(cell: Any) -> int:
    """What a JSON-ready cell adds to a page: its text, a blob's base64, or 16 for anything else."""
    if isinstance(cell, str):
        return len(cell)
    return len(cell["$blob"]) if isinstance(cell, dict) else 16


def _plain_size(chunk: list[Any]) -> int | None:
    """The page budget `chunk` uses, or None when a cell needs `_cell` (a blob, NaN, a long text)."""
    size = 0
    for raw in chunk:
        for value in raw:
            kind = type(value)
            if kind is str and len(value) <= MAX_CELL_CHARS:
                size += len(value)
            elif kind is int or value is None or (kind is float and math.isfinite(value)):
                size += 16
            else:
                return None
    return size


def _cell(value: Any) -> Any:
    """One database value as JSON can carry it, cut at the cell limit."""
    if isinstance(value, str):
        if len(value) > MAX_CELL_CHARS:
            return f"{value[:MAX_CELL_CHARS]}…[{len(value)} chars]"
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, bytes):
        shown = value[: MAX_CELL_CHARS * 3 // 4]
        blob: dict[str, Any] = {"$blob": base64.b64encode(shown).decode(), "bytes": len(value)}
        if len(shown) < len(value):
            blob["truncated"] = True
        return blob
    return value


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# --- SQL: the read-only PostgreSQL engine ------------------------------------------------------

# psycopg would load these as Python objects that JSON cannot carry exactly (Decimal; dates that may
# be infinite or BC; timedelta) or without bound (json): they arrive as PostgreSQL's own text instead.
PG_TEXT_TYPES = "numeric date time timetz timestamp timestamptz interval json jsonb".split()
# Predefined roles that PostgreSQL lets read files or run programs even inside a read-only transaction.
PG_FILE_ROLES = ("pg_execute_server_program", "pg_read_server_files", "pg_write_server_files")
PG_OBJECTS = """
SELECT n.nspname, c.relname, CASE WHEN c.relkind IN ('v', 'm') THEN 'view' ELSE 'table' END, c.relkind, c.oid,
       pg_table_is_visible(c.oid)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND NOT c.relispartition
  AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'
  AND has_any_column_privilege(c.oid, 'SELECT')
ORDER BY 1, 2
"""
PG_COLUMNS = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod), NOT a.attnotnull, pg_get_expr(d.adbin, d.adrelid),
       coalesce(array_position(pk.conkey, a.attnum), 0)
FROM pg_attribute a
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
LEFT JOIN pg_constraint pk ON pk.conrelid = a.attrelid AND pk.contype = 'p'
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""
PG_FOREIGN_KEYS = """
SELECT fn.nspname || '.' || fc.relname,
       ARRAY(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY k(num, pos)
             JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.num ORDER BY k.pos),
       ARRAY(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY k(num, pos)
             JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.num ORDER BY k.pos)
FROM pg_constraint c JOIN pg_class fc ON fc.oid = c.confrelid JOIN pg_namespace fn ON fn.oid = fc.relnamespace
WHERE c.conrelid = %s AND c.contype = 'f'
ORDER BY c.conname
"""
PG_INDEXES = """
SELECT ic.relname, i.indisunique,
       ARRAY(SELECT pg_get_indexdef(i.indexrelid, k, true) FROM generate_series(1, i.indnkeyatts) k)
FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
WHERE i.indrelid = %s
ORDER BY ic.relname
"""
PG_CONSTRAINTS = """
SELECT conname, pg_get_constraintdef(oid, true) FROM pg_constraint
WHERE conrelid = %s AND contype IN ('p', 'u', 'f', 'c', 'x')
ORDER BY contype <> 'p', conname
"""
# Every table's insert, update and delete counters and file number (which TRUNCATE changes): any
# role may read them, and they move whenever rows do, up to a second after the commit.
PG_FINGERPRINT = """
SELECT string_agg(concat_ws(':', s.relid, s.n_tup_ins, s.n_tup_upd, s.n_tup_del, c.relfilenode), ',' ORDER BY s.relid)
FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
"""


class PostgresDatabase:
    """The one place that knows PostgreSQL: pooled sessions that can only read, one statement per call.

    Each call borrows a pooled connection and runs exactly one statement, always through the
    extended protocol (which refuses `SELECT 1; COMMIT; DROP ...`), inside a READ ONLY transaction
    that is always rolled back, so nothing the statement starts (a large object, a NOTIFY, a
    setting) outlives the call; the pool then runs DISCARD ALL, which ends session state that a
    rollback keeps (advisory locks, prepared statements). Every connection starts with
    default_transaction_read_only, statement_timeout and idle_in_transaction_session_timeout set.
    Roles that read files or run programs despite all that (superusers, pg_*_server_* members)
    are refused.
    """

    dialect = "PostgreSQL"

    def __init__(self, url: str, timeout_ms: int, pool_size: int):
        try:  # imported only when a PostgreSQL URL is given: the extra is optional
            import psycopg
            import psycopg_pool
        except ImportError:
            raise SystemExit(
                f"{SERVER_NAME}: DATABASE_URL names PostgreSQL, which needs the postgres extra:"
                " pip install 'safe-data-mcp[postgres]' (or uv run --extra postgres ...)"
            ) from None
        self.pg, self.pg_pool = psycopg, psycopg_pool
        try:
            given = psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.Error:  # its message can quote the password: say only what is wrong
            raise SystemExit(f"{SERVER_NAME}: bad setting MCP_DATABASE_URL: not a valid PostgreSQL URL") from None
        limits = (
            f"-c default_transaction_read_only=on -c statement_timeout={timeout_ms}"
            f" -c idle_in_transaction_session_timeout={timeout_ms}"
        )
        self.conninfo = psycopg.conninfo.make_conninfo(
            url,
            options=f"{given['options']} {limits}" if given.get("options") else limits,
            application_name=given.get("application_name", SERVER_NAME),
        )
        self.label = f"PostgreSQL database {given.get('dbname', '?')} on {given.get('host', 'localhost')}"
        self.pool_size, self.timeout_s = pool_size, timeout_ms / 1000
        self.chunk = 500 if psycopg.capabilities.has_stream_chunked() else 1  # rows per network read
        self._pool: Any = None
        self._lock = threading.Lock()

    def __str__(self) -> str:
        return self.label

    def _open_pool(self) -> Any:
        with self._lock:
            if self._pool is None:
                wait = max(2, math.ceil(self.timeout_s))
                with self.pg.connect(self.conninfo, autocommit=True, connect_timeout=wait) as conn:
                    _refuse_privileged_role(conn)
                self._pool = self.pg_pool.ConnectionPool(
                    self.conninfo,
                    min_size=1,
                    max_size=self.pool_size,
                    name=SERVER_NAME,
                    open=True,
                    kwargs={"autocommit": True, "prepare_threshold": None},  # nothing prepared server-side
                    configure=_configure_connection,
                    reset=lambda conn: conn.execute("DISCARD ALL"),
                    check=self.pg_pool.ConnectionPool.check_connection,  # replace one lost to a restart
                )
            return self._pool

    def close(self) -> None:
        """Close the pool (when the server stops); the next call would open a new one."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    @contextlib.contextmanager
    def _session(self, deadline: Deadline) -> Iterator[Any]:
        """A pooled connection in a READ ONLY transaction that is rolled back at the end, whose
        statement PostgreSQL cancels if the call is cancelled or outlives its deadline."""
        pool = self._open_pool()
        try:
            conn = pool.getconn(timeout=max(0.1, deadline.at - time.monotonic()))
        except self.pg_pool.PoolTimeout:
            raise QueryRefused(
                f"no PostgreSQL connection came free before the deadline (all {self.pool_size} busy,"
                " or the server is unreachable); try again, or raise MCP_POOL_SIZE"
            ) from None
        done = threading.Event()
        watcher = threading.Thread(target=_cancel_when_passed, args=(conn, deadline, done), daemon=True)
        watcher.start()
        try:
            conn.execute("BEGIN TRANSACTION READ ONLY")
            yield conn
        finally:
            done.set()
            watcher.join()
            try:
                conn.execute("ROLLBACK")  # whatever the statement did did not happen
            except self.pg.Error:
                conn.close()  # lost, or stuck in COPY: the pool replaces a closed connection
            pool.putconn(conn)

    def _run(self, work: Any, deadline: Deadline) -> Any:
        try:
            return work()
        except (self.pg.Error, UnicodeEncodeError) as exc:
            raise _explain_postgres(exc, deadline) from None

    def execute(
        self, sql: str, params: list | dict | None, max_rows: int, skip: int, deadline: Deadline
    ) -> tuple[list[str], list[list[Any]], bool, str]:
        """Run one read-only statement: columns, up to `max_rows` rows after `skip`, whether more
        remain, and the data version read just before, in the same session (see PG_FINGERPRINT)."""
        if isinstance(params, dict):
            raise QueryRefused("PostgreSQL placeholders are $1, $2, ...: pass params as a list, not an object")

        def work() -> tuple[list[str], list[list[Any]], bool, str]:
            with self._session(deadline) as conn:
                version = _pg_version(conn)
                cursor = self.pg.RawCursor(conn)  # $1 placeholders as PostgreSQL has them; % is not special
                rows = _PostgresRows(cursor.stream(sql, params, size=self.chunk))  # streamed: the extended protocol
                if skip:
                    _discard(rows, skip)
                page, more = _fetch_page(rows, max_rows)
                rows.close()
                if cursor.description:
                    return [column.name for column in cursor.description], page, more, version
                # No row came, so no description either: the unnamed statement still describes itself.
                described = conn.pgconn.describe_prepared(b"")
                encoding = conn.info.encoding
                return [described.fname(i).decode(encoding) for i in range(described.nfields)], page, more, version

        return self._run(work, deadline)

    def fingerprint(self) -> str:
        """Changes whenever the rows of any table do (see PG_FINGERPRINT)."""
        deadline = Deadline(self.timeout_s)

        def work() -> str:
            with self._session(deadline) as conn:
                return _pg_version(conn)

        return self._run(work, deadline)

    # Introspection reads the catalog with parameters; the only built SQL quotes catalog names.

    def _objects(self, conn: Any) -> dict[str, tuple]:
        """Readable tables and views by schema-qualified name: (schema, name, type, relkind, oid, visible)."""
        return {f"{row[0]}.{row[1]}": row for row in conn.execute(PG_OBJECTS)}

    def table_names(self, deadline: Deadline) -> list[str]:
        def work() -> list[str]:
            with self._session(deadline) as conn:
                return list(self._objects(conn))

        return self._run(work, deadline)

    def _row_count(self, conn: Any, schema: str, name: str, deadline: Deadline) -> int | None:
        if deadline.passed():
            return None
        conn.execute("SAVEPOINT row_count")
        try:
            table = f"{quote_identifier(schema)}.{quote_identifier(name)}"
            return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        except self.pg.Error:
            conn.execute("ROLLBACK TO SAVEPOINT row_count")
            return None  # stopped at the deadline, or a view that cannot be evaluated

    def list_tables(self, deadline: Deadline) -> list[TableSummary]:
        def work() -> list[TableSummary]:
            with self._session(deadline) as conn:
                return [
                    TableSummary(name=qualified, type=kind, row_count=self._row_count(conn, schema, name, deadline))
                    for qualified, (schema, name, kind, *_) in self._objects(conn).items()
                ]

        return self._run(work, deadline)

    def describe_table(self, name: str, deadline: Deadline) -> TableDescription:
        def work() -> TableDescription:
            with self._session(deadline) as conn:
                objects = self._objects(conn)
                # "schema.table" as list_tables shows it, or a bare name that the search_path finds
                found = objects.get(name) or next((o for o in objects.values() if o[5] and o[1] == name), None)
                if found is None:
                    known = ", ".join(list(objects)[:100]) or "none"
                    raise QueryRefused(f"no table or view named {name!r}; the tables are: {known}")
                return self._describe(conn, found, deadline)

        return self._run(work, deadline)

    def _describe(self, conn: Any, found: tuple, deadline: Deadline | None) -> TableDescription:
        schema, name, kind, relkind, oid, _ = found
        qualified = f"{quote_identifier(schema)}.{quote_identifier(name)}"
        columns = [
            ColumnInfo(name=c, type=t, nullable=nullable, default=d, primary_key=pk)
            for c, t, nullable, d, pk in conn.execute(PG_COLUMNS, (oid,))
        ]
        foreign_keys = [
            ForeignKey(columns=source, references_table=target, references_columns=dest)
            for target, source, dest in conn.execute(PG_FOREIGN_KEYS, (oid,))
        ]
        indexes = [
            IndexInfo(name=index, unique=unique, columns=keys)
            for index, unique, keys in conn.execute(PG_INDEXES, (oid,))
        ]
        if kind == "view":
            (body,) = conn.execute("SELECT pg_get_viewdef(%s, true)", (oid,)).fetchone()
            verb = "CREATE MATERIALIZED VIEW" if relkind == "m" else "CREATE VIEW"
            create_sql = f"{verb} {qualified} AS\n{body}"
        else:  # PostgreSQL keeps no CREATE TABLE text: this one is rebuilt from the catalog
            lines = [
                f"{quote_identifier(c.name)} {c.type}{'' if c.nullable else ' NOT NULL'}"
                + (f" DEFAULT {c.default}" if c.default else "")
                for c in columns
            ]
            lines += [f"CONSTRAINT {quote_identifier(n)} {d}" for n, d in conn.execute(PG_CONSTRAINTS, (oid,))]
            create_sql = f"CREATE TABLE {qualified} (\n    " + ",\n    ".join(lines) + "\n)"
        return TableDescription(
            name=f"{schema}.{name}",
            type=kind,
            columns=columns,
            foreign_keys=foreign_keys,
            indexes=indexes,
            row_count=self._row_count(conn, schema, name, deadline) if deadline else None,
            create_sql=create_sql,
        )

    def schema_sql(self, deadline: Deadline) -> str:
        """The CREATE statements, for a model that is asked to write SQL against them."""

        def work() -> str:
            parts: list[str] = []
            with self._session(deadline) as conn:
                for found in self._objects(conn).values():
                    if deadline.passed() or sum(map(len, parts)) > 20_000:
                        break
                    parts.append(self._describe(conn, found, None).create_sql or "")
            return "\n".join(parts)[:20_000]

        return self._run(work, deadline)


class _PostgresRows:
    """A psycopg row stream read through the fetchmany/fetchone calls that _fetch_page makes."""

    def __init__(self, stream: Iterator[tuple]):
        self.stream = stream

    def fetchmany(self, size: int) -> list[list[Any]]:
        return [[_postgres_value(value) for value in row] for row in itertools.islice(self.stream, size)]

    def fetchone(self) -> tuple | None:
        return next(self.stream, None)

    def close(self) -> None:
        self.stream.close()  # psycopg cancels the rest of the result on the server


def _pg_version(conn: Any) -> str:
    (state,) = conn.execute(PG_FINGERPRINT).fetchone()
    return hashlib.sha256((state or "").encode()).hexdigest()[:16]


def _postgres_value(value: Any) -> Any:
    """A psycopg value as JSON can carry it, before _cell bounds it: arrays stay lists, and
    anything not already JSON (uuid, inet, ranges, ...) becomes its text."""
    if value is None or isinstance(value, str | int | float | bytes):
        return value
    if isinstance(value, list):
        return [_cell(_postgres_value(item)) for item in value]
    return str(value)


def _configure_connection(conn: Any) -> None:
    """Once per pooled connection: the types in PG_TEXT_TYPES load as PostgreSQL's text."""
    from psycopg.types.string import TextLoader

    for name in PG_TEXT_TYPES:
        conn.adapters.register_loader(name, TextLoader)


def _refuse_privileged_role(conn: Any) -> None:
    """Refuse a role that PostgreSQL lets reach files or programs even in a read-only transaction."""
    superuser, reach = conn.execute(
        "SELECT rolsuper, ARRAY(SELECT r.rolname::text FROM pg_roles r WHERE (r.rolsuper OR r.rolname = ANY(%s))"
        " AND pg_has_role(session_user, r.oid, 'MEMBER') ORDER BY 1) FROM pg_roles WHERE rolname = session_user",
        (list(PG_FILE_ROLES),),
    ).fetchone()
    if superuser or reach:
        what = "is a superuser" if superuser else f"can act as {', '.join(reach)}"
        raise QueryRefused(
            f"the PostgreSQL role {conn.info.user!r} {what}, which PostgreSQL lets read server files and run"
            " programs even inside a read-only transaction; connect as a role that can only read (see the README)"
        )


def _cancel_when_passed(conn: Any, deadline: Deadline, done: threading.Event) -> None:
    """Watch one call: when it is cancelled or outlives its deadline, cancel its statement on the server."""
    while not done.wait(0.05):
        if deadline.passed():
            with contextlib.suppress(Exception):
                conn.cancel_safe(timeout=5)
            return


def _explain_postgres(exc: Exception, deadline: Deadline) -> QueryRefused:
    """Turn a psycopg error into a message that says what was wrong and what to do instead."""
    sqlstate = getattr(exc, "sqlstate", None)
    diag = getattr(exc, "diag", None)
    text = (diag.message_primary if diag is not None and diag.message_primary else str(exc)).strip()
    if sqlstate == "25006":  # read_only_sql_transaction
        return QueryRefused(f"only read-only statements are allowed: {text}; this server can only read")
    if sqlstate == "57014":  # query_canceled: statement_timeout, or our cancel at the deadline or on request
        if deadline.stop.is_set():
            return QueryRefused("the query was cancelled")
        return QueryRefused(
            f"the query ran past its {deadline.seconds * 1000:.0f} ms deadline and was stopped;"
            " narrow it with WHERE or LIMIT"
        )
    if "multiple commands" in text:
        return QueryRefused("send exactly one SQL statement per call")
    if sqlstate == "42501":  # insufficient_privilege
        return QueryRefused(f"PostgreSQL refused: {text}; this server only reads what its role may read")
    if sqlstate in ("08P01", "42P02") or "cannot adapt" in text or "query parameter" in text:
        return QueryRefused(f"parameters do not match the query: {text}")
    if isinstance(exc, UnicodeEncodeError):
        return QueryRefused("the query or a parameter is not valid Unicode text (lone surrogate?)")
    if "didn't produce a result" in text or "EMPTY_QUERY" in text:
        return QueryRefused("the statement returned no columns: only queries are allowed")
    if "COPY" in text and sqlstate is None:
        return QueryRefused("COPY is not available here: read the rows with SELECT")
    if sqlstate is None and "connection" in text.lower():
        return QueryRefused(f"cannot reach PostgreSQL: {text}")
    return QueryRefused(f"PostgreSQL said: {text}")


def open_database(settings: Settings) -> SQLiteDatabase | PostgresDatabase:
    """The one switch between the engines: PostgreSQL when a URL is set, SQLite otherwise."""
    if settings.database_url:
        url = settings.database_url.get_secret_value()
        return PostgresDatabase(url, settings.query_timeout_ms, settings.pool_size)
    assert settings.db_path
    return SQLiteDatabase(settings.db_path)


# --- Page cursors ------------------------------------------------------------------------------


class CursorCodec:
    """Signed, expiring page cursors: the query, its parameters, the offset and the data's version.

    Signed so a client cannot alter them; the database fingerprint inside makes a page refuse
    to continue over data that changed, which is what keeps every row exactly once.
    """

    def __init__(self, secret: bytes):
        self.secret = secret

    def encode(self, state: dict[str, Any]) -> str:
        body = base64.urlsafe_b64encode(json.dumps(state, separators=(",", ":")).encode())
        sig = hmac.new(self.secret, body, hashlib.sha256).digest()[:16]
        return f"{body.decode()}.{base64.urlsafe_b64encode(sig).decode().rstrip('=')}"

    def decode(self, token: str) -> dict[str, Any]:
        body, _, sig = token.partition(".")
        expected = hmac.new(self.secret, body.encode(), hashlib.sha256).digest()[:16]
        try:
            valid = hmac.compare_digest(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)), expected)
            state = json.loads(base64.urlsafe_b64decode(body)) if valid else None
        except (ValueError, UnicodeError):
            state = None
        if not isinstance(state, dict):
            raise QueryRefused("the cursor is not valid here (altered, or from another server); rerun the query")
        if time.time() > state.get("expires", 0):
            raise QueryRefused("the cursor has expired; rerun the query to start again")
        return state


# --- Paths: confinement to the files root ------------------------------------------------------


class PathRefused(Exception):
    """A path the caller can fix: outside the root, missing, the wrong kind, too large or broken."""


def confine(root: Path, user_path: str) -> Path:
    """Resolve `user_path` under `root`; refuse anything that lands outside it."""
    if "\x00" in user_path:
        raise PathRefused("paths may not contain NUL bytes")
    if len(user_path) > MAX_PATH_CHARS:
        raise PathRefused(f"the path is longer than {MAX_PATH_CHARS} characters")
    real_root = root.resolve()
    if not real_root.is_dir():
        raise PathRefused("the files root is missing; restore it and try again")
    try:
        resolved = (real_root / user_path).resolve()
    except (OSError, RuntimeError) as exc:  # symlink loops, names too long for the file system
        raise PathRefused(f"cannot resolve {user_path!r}: {exc}") from None
    if os.path.commonpath([real_root, resolved]) != str(real_root):
        raise PathRefused(f"{user_path!r} is outside the files root; use a path relative to it")
    return resolved


def relative_name(root: Path, path: Path) -> str:
    return path.relative_to(root.resolve()).as_posix() or "."


def read_json_file(path: Path, max_bytes: int) -> Any:
    """Parse a regular file of at most `max_bytes`, without ever blocking on a FIFO or device."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise PathRefused("no such file; list_files shows what exists") from None
    except OSError as exc:
        raise PathRefused(f"cannot open the file: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise PathRefused("that is a folder, not a file; use list_files for folders")
        if not stat.S_ISREG(info.st_mode):
            raise PathRefused("only regular files can be read (not FIFOs, sockets or devices)")
        if info.st_size > max_bytes:
            raise PathRefused(f"the file is {info.st_size} bytes, over the {max_bytes}-byte limit")
        with os.fdopen(os.dup(fd), "rb") as handle:
            raw = handle.read(max_bytes + 1)
    finally:
        os.close(fd)
    if len(raw) > max_bytes:
        raise PathRefused(f"the file grew past the {max_bytes}-byte limit while being read")
    return parse_json(raw)


def parse_json(raw: bytes) -> Any:
    """Strict JSON: UTF-8 (a BOM is fine), no NaN or Infinity, no duplicate keys, bounded depth."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PathRefused(f"the file is not UTF-8 text (bad byte at offset {exc.start})") from None
    try:
        value = json.loads(
            text, parse_constant=_refuse_constant, parse_float=_finite_float, object_pairs_hook=_unique_keys
        )
    except json.JSONDecodeError as exc:
        raise PathRefused(f"the file is not valid JSON: {exc}") from None
    except RecursionError:
        raise PathRefused(f"the JSON is nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:  # NaN/Infinity, duplicate keys, integers past Python's digit limit
        raise PathRefused(f"the file is not acceptable JSON: {exc}") from None
    if _depth_exceeds(value, MAX_JSON_DEPTH):
        raise PathRefused(f"the JSON is nested deeper than {MAX_JSON_DEPTH} levels")
    if re.search(rb"\\u[dD][89a-fA-F]", raw):  # a surrogate escape: text only when it is half of a pair
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise PathRefused("the JSON holds a lone surrogate escape (\\ud800-\\udfff), which is not text") from None
    return value


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text} is too large for a JSON number (it would be infinite)")
    return number


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (use null or a string)")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        duplicate = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"duplicate key {duplicate!r}: its meaning depends on the reader")
    return result


def _depth_exceeds(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth > limit:
                return True
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def resolve_pointer(document: Any, pointer: str) -> Any:
    """RFC 6901: '' is the whole document, '/a/0' is member a's first element, ~1 is /, ~0 is ~."""
    if pointer == "":
        return document
    if not pointer.startswith("/"):
        raise PathRefused(f"a JSON Pointer starts with '/' (got {pointer!r}); '' means the whole file")
    node = document
    for depth, token in enumerate(pointer[1:].split("/")):
        key = token.replace("~1", "/").replace("~0", "~")
        where = "/".join(pointer.split("/")[: depth + 1]) or "the root"
        if isinstance(node, dict):
            if key not in node:
                raise PathRefused(f"no member {key!r} at {where}; members: {', '.join(list(node)[:20])}")
            node = node[key]
        elif isinstance(node, list):
            if not re.fullmatch(r"0|[1-9][0-9]*", key) or int(key) >= len(node):
                raise PathRefused(f"{key!r} is not an index of the {len(node)}-element array at {where}")
            node = node[int(key)]
        else:
            raise PathRefused(f"{where} is a {type(node).__name__}, which has no member {key!r}")
    return node


def glob_matcher(pattern: str) -> Any:
    """A test of / paths against a glob: '*', '?', '[...]' within one name, '**' for any depth.

    No pattern can take exponential time (a regex over whole paths could, and re holds the GIL):
    each name is matched on its own, its stars as atomic groups like fnmatch's, and '**' through
    a table of which path prefixes the segments so far can match.
    """
    if "\x00" in pattern or pattern.startswith("/") or ".." in pattern.split("/"):
        raise PathRefused(f"the pattern {pattern!r} must stay inside the folder (no '/' start, no '..')")
    try:
        names = [s for s in pattern.split("/") if s != "."] or ["*"]  # "./*.json" means "*.json"
        segments = [None if s == "**" else re.compile(_segment_regex(s), re.DOTALL) for s in names]
    except re.error as exc:
        raise PathRefused(f"the pattern {pattern!r} is not a valid glob: {exc}") from None

    def matches(path: str) -> bool:
        parts = path.split("/")
        reach = [True] + [False] * len(parts)  # reach[j]: the segments so far match exactly parts[:j]
        for index, segment in enumerate(segments):
            if segment is None:  # any number of parts; at least one when '**' ends the pattern
                spread = list(itertools.accumulate(reach, max))
                reach = spread if index < len(segments) - 1 else [False, *spread[:-1]]
            else:
                reach = [False] + [reach[j] and segment.fullmatch(part) is not None for j, part in enumerate(parts)]
        return reach[-1]

    return matches


def _segment_regex(segment: str) -> str:
    """One name's glob as a regex whose stars cannot backtrack into each other."""
    chunks, out, i = [], "", 0
    while i < len(segment):
        # a "]" right after "[" or "[!" belongs to the class: "[]]" matches "]", "[!]]" anything else
        char, end = segment[i], segment.find("]", i + (3 if segment[i + 1 : i + 2] == "!" else 2))
        if char == "*":
            chunks.append(out)
            out = ""
        elif char == "?":
            out += "[^/]"
        elif char == "[" and end != -1:
            body = segment[i + 1 : end].replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")
            out += "[^/" + body[1:] + "]" if body.startswith("!") else "[" + body.replace("^", "\\^", 1) + "]"
            i = end
        else:
            out += re.escape(char)
        i += 1
    if not chunks:
        return out
    head, *middle = chunks  # head*middle[0]*...*out: each middle chunk at its first match
    return head + "".join(f"(?>.*?{chunk})" for chunk in middle if chunk) + ".*" + out


def list_entries(root: Path, folder: Path, pattern: str, deadline: Deadline) -> FileList:
    """Entries under `folder` matching `pattern`, never following a symlink, bounded in count and time."""
    matcher = glob_matcher(pattern)
    depth = None if "**" in pattern else pattern.count("/") + 1
    entries: list[FileEntry] = []
    pending = [(folder, "", 1)]
    while pending:
        directory, prefix, level = pending.pop(0)
        try:
            with os.scandir(directory) as scan:
                children = sorted(scan, key=lambda e: e.name)
        except OSError as exc:
            if directory == folder:
                raise PathRefused(f"cannot read that folder: {exc.strerror}") from None
            continue  # a subfolder unreadable or vanished meanwhile: list what can be listed
        for child in children:
            if deadline.passed() or len(entries) >= MAX_LIST_ENTRIES:
                return FileList(entries=entries, truncated=True)
            name = prefix + child.name
            if matcher(name):
                with contextlib.suppress(OSError, OverflowError, ValueError):  # vanished, or a wild mtime
                    entries.append(_entry(root, child))
            if (depth is None or level < depth) and child.is_dir(follow_symlinks=False):
                pending.append((Path(child.path), name + "/", level + 1))
    return FileList(entries=entries, truncated=False)


def _entry(root: Path, child: os.DirEntry) -> FileEntry:
    info = child.stat(follow_symlinks=False)
    kind = (
        "symlink" if stat.S_ISLNK(info.st_mode) else
        "directory" if stat.S_ISDIR(info.st_mode) else
        "file" if stat.S_ISREG(info.st_mode) else "other"
    )  # fmt: skip
    path = relative_name(root, Path(child.path).parent.resolve() / child.name)
    return FileEntry(
        # a name that is not UTF-8 cannot travel as JSON text: show it with U+FFFD, not fail the listing
        path=os.fsencode(path).decode("utf-8", "replace"),
        kind=kind,
        size=info.st_size if kind == "file" else None,
        modified=datetime.fromtimestamp(info.st_mtime, UTC).isoformat(timespec="seconds"),
    )


# --- The built-in demo -------------------------------------------------------------------------

DEMO_VERSION = "1"
DEMO_SCHEMA = """
CREATE TABLE customers (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    email TEXT NOT NULL UNIQUE,
    country TEXT NOT NULL,
    joined_on TEXT NOT NULL
);
CREATE TABLE products (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    category TEXT NOT NULL,
    price_cents INTEGER NOT NULL CHECK (price_cents > 0),
    in_stock INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE orders (
    id INTEGER PRIMARY KEY,
    customer_id INTEGER NOT NULL REFERENCES customers(id),
    ordered_on TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'placed'
        CHECK (status IN ('placed', 'shipped', 'delivered', 'cancelled'))
);
CREATE TABLE order_items (
    order_id INTEGER NOT NULL REFERENCES orders(id),
    product_id INTEGER NOT NULL REFERENCES products(id),
    quantity INTEGER NOT NULL CHECK (quantity > 0),
    unit_price_cents INTEGER NOT NULL,
    PRIMARY KEY (order_id, product_id)
);
CREATE INDEX orders_by_customer ON orders(customer_id);
CREATE VIEW order_totals AS
    SELECT o.id AS order_id, c.name AS customer, o.ordered_on, o.status,
           SUM(i.quantity * i.unit_price_cents) / 100.0 AS total
    FROM orders o
    JOIN customers c ON c.id = o.customer_id
    JOIN order_items i ON i.order_id = o.id
    GROUP BY o.id;
"""
FIRST_NAMES = "Ada Bruno Chen Dalia Emil Fatima Goran Hana Ivan Julia Kofi Lena Mateo Nina Omar Priya".split()
LAST_NAMES = "Lovelace Silva Wei Haddad Novak Rahman Petrov Sato Horvat Weber Mensah Berg Rossi Kaur".split()
COUNTRIES = ["DE", "FR", "JP", "BR", "IN", "US", "GH", "SE", "IT", "CA"]
PRODUCTS = [
    ("Espresso beans 1 kg", "coffee", 2490), ("Filter beans 500 g", "coffee", 1290),
    ("Decaf beans 500 g", "coffee", 1390), ("Green tea 100 g", "tea", 890),
    ("Earl grey 100 g", "tea", 790), ("Ceramic mug", "kitchen", 1500),
    ("Pour-over dripper", "kitchen", 2400), ("Burr grinder", "equipment", 8900),
    ("Milk frother", "equipment", 3900), ("Gooseneck kettle", "equipment", 5900),
    ("Paper filters (100)", "kitchen", 450), ("Travel tumbler", "kitchen", 2200),
]  # fmt: skip
DEMO_FILES = {
    "company.json": {
        "name": "Bean & Leaf Ltd.",
        "founded": 2019,
        "headquarters": {"city": "Hamburg", "country": "DE"},
        "contacts": [{"role": "support", "email": "help@example.com"}],
    },
    "reports/2026-q3.json": {
        "quarter": "2026-Q3",
        "revenue_eur": 48210.5,
        "top_categories": ["coffee", "equipment", "tea"],
        "notes": "Grinder sales doubled after the September newsletter.",
    },
    "inventory/warehouses.json": [
        {"id": "HAM-1", "city": "Hamburg", "capacity_pallets": 120, "active": True},
        {"id": "LYS-1", "city": "Lyon", "capacity_pallets": 60, "active": False},
    ],
}


def demo_folder() -> Path:
    """The demo lives in the per-user cache folder (XDG on Linux, the usual places elsewhere)."""
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / SERVER_NAME / f"demo-v{DEMO_VERSION}"


def ensure_demo(folder: Path) -> tuple[Path, Path]:
    """Write the demo database and files once; later starts reuse them. Returns (db, files root)."""
    database, files = folder / "demo.db", folder / "files"
    if database.is_file() and files.is_dir():
        return database, files
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".demo-", dir=folder.parent))
    try:
        _write_demo_database(staging / "demo.db")
        for name, content in DEMO_FILES.items():
            target = staging / "files" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
        if folder.exists():  # left half-deleted by hand: the demo is ours to rebuild
            shutil.rmtree(folder, ignore_errors=True)
        try:
            staging.rename(folder)  # atomic: a second server starting at once sees all or nothing
        except OSError:
            if not (database.is_file() and files.is_dir()):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("wrote the demo data to %s", folder)
    return database, files


def _write_demo_database(path: Path) -> None:
    rng = random.Random(2026)  # noqa: S311 -- the same demo on every machine, not a secret
    conn = sqlite3.connect(path)
    try:
        conn.executescript(DEMO_SCHEMA)
        customers = []
        for cid in range(1, 61):
            first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
            joined = date(2023, 1, 1) + timedelta(days=rng.randrange(900))
            customers.append(
                (
                    cid,
                    f"{first} {last}",
                    f"{first}.{last}.{cid}@example.com".lower(),
                    rng.choice(COUNTRIES),
                    joined.isoformat(),
                )
            )
        conn.executemany("INSERT INTO customers VALUES (?, ?, ?, ?, ?)", customers)
        conn.executemany(
            "INSERT INTO products VALUES (?, ?, ?, ?, ?)",
            [(pid, name, cat, price, int(rng.random() > 0.15)) for pid, (name, cat, price) in enumerate(PRODUCTS, 1)],
        )
        statuses = ["placed", "shipped", "delivered", "delivered", "delivered", "cancelled"]
        for oid in range(1, 241):
            ordered = date(2025, 6, 1) + timedelta(days=rng.randrange(480))
            conn.execute(
                "INSERT INTO orders VALUES (?, ?, ?, ?)",
                (oid, rng.randrange(1, 61), ordered.isoformat(), rng.choice(statuses)),
            )
            for pid in rng.sample(range(1, len(PRODUCTS) + 1), rng.randrange(1, 4)):
                conn.execute(
                    "INSERT INTO order_items VALUES (?, ?, ?, ?)",
                    (oid, pid, rng.randrange(1, 4), PRODUCTS[pid - 1][2]),
                )
        conn.commit()
    finally:
        conn.close()


# --- The server --------------------------------------------------------------------------------

READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)
NO_SAMPLING = (
    "this client cannot answer sampling requests, so the server cannot ask its model for SQL;"
    " write the query yourself and call query_database"
)
ASK_SYSTEM_PROMPT = (
    "You translate a question into exactly one read-only {dialect} SELECT statement for the schema"
    " below. Answer with the SQL only: no prose, no code fences, no semicolon-separated extras."
)


class DataServer(FastMCP):
    """FastMCP with the network guards this server promises, whichever way it is started."""

    def __init__(self, *args: Any, auth_token: SecretStr | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.auth_token = auth_token

    async def run_http_async(self, *args: Any, host: str | None = None, **kwargs: Any) -> None:
        host = host or "127.0.0.1"
        if not is_loopback(host) and not self.auth_token:
            raise SystemExit(
                f"{SERVER_NAME}: refusing to listen on {host} without MCP_AUTH_TOKEN:"
                " anyone who can reach it could read your data. Set a token or bind 127.0.0.1."
            )
        kwargs.setdefault("host_origin_protection", "auto")  # Host/Origin checks on loopback
        await super().run_http_async(*args, host=host, **kwargs)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def output_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The output schema FastMCP derives from a `-> model` annotation, for tools that return ToolResult."""
    return compress_schema(model.model_json_schema(mode="serialization"), prune_titles=True)


def structured(result: BaseModel) -> ToolResult:
    """`result` as structuredContent plus the same compact JSON as one text block, each built once.

    What FastMCP sends for a returned model, without its generic path that encodes the result four
    times and parses it twice: a 10,000-row page spent more time there than in SQLite.
    """
    text = TextContent(type="text", text=result.model_dump_json())
    # model_construct, not ToolResult(...): the constructor encodes and parses structured content once
    # more to make it JSON, and pydantic's JSON mode has already made it so.
    return ToolResult.model_construct(content=[text], structured_content=result.model_dump(mode="json"))


def close_at_exit(database: SQLiteDatabase | PostgresDatabase) -> Any:
    """A FastMCP lifespan that closes the database (PostgreSQL's pool) when the server stops."""

    @contextlib.asynccontextmanager
    async def lifespan(_server: FastMCP) -> Any:
        try:
            yield {}
        finally:
            await anyio.to_thread.run_sync(database.close)

    return lifespan


async def in_worker_thread(work: Any, stop: threading.Event, ctx: Context | None, total_s: float) -> Any:
    """Run blocking work in a worker thread, reporting progress while it runs.

    If the call is cancelled (the client cancels or disconnects), `stop` is set: the work checks it
    through its Deadline and ends, releasing its connection, instead of running on unobserved.
    """
    started = time.monotonic()

    async def report() -> None:
        while ctx is not None:
            await anyio.sleep(PROGRESS_EVERY_S)
            elapsed = time.monotonic() - started
            await ctx.report_progress(elapsed, total_s, f"running for {elapsed:.0f} s")

    outcome: list[Any] = []
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(report)
            try:  # kept out of the task group so errors are not wrapped in an ExceptionGroup
                outcome.append(await anyio.to_thread.run_sync(work, abandon_on_cancel=True))
            except Exception as exc:
                outcome.append(exc)
            group.cancel_scope.cancel()
    finally:
        stop.set()
    if isinstance(outcome[0], Exception):
        raise outcome[0]
    return outcome[0]


def create_server(settings: Settings) -> FastMCP:
    """Build the one FastMCP instance from settings: tools, resources and middleware."""
    configure_logging(settings.log_level)
    if settings.files_root is None or (settings.db_path is None and settings.database_url is None):
        demo_db, demo_files = ensure_demo(demo_folder())
        settings = settings.model_copy(
            update={
                "db_path": settings.db_path or (None if settings.database_url else demo_db),
                "files_root": settings.files_root or demo_files,
            }
        )
    assert settings.files_root
    database = open_database(settings)
    files_root = settings.files_root
    timeout_s = settings.query_timeout_ms / 1000
    secret = settings.cursor_secret.get_secret_value().encode() if settings.cursor_secret else secrets.token_bytes(32)
    cursors = CursorCodec(secret)

    middleware = []
    if settings.rate_limit:
        count, period = parse_rate_limit(settings.rate_limit)
        middleware.append(RateLimitingMiddleware(max_requests_per_second=count / period, burst_capacity=count))
    token = settings.auth_token.get_secret_value() if settings.auth_token else None
    auth = (
        DebugTokenVerifier(
            validate=lambda offered: hmac.compare_digest(offered.encode(), token.encode()), client_id="bearer"
        )
        if token
        else None
    )
    mcp = DataServer(
        SERVER_NAME,
        version=SERVER_VERSION,
        instructions=(
            f"Read-only access to a {database.dialect} database and a folder of JSON files. Start with list_tables"
            " and describe_table, then query_database with one SELECT; page on with next_cursor."
            " Use list_files and read_json for the files."
        ),
        auth=auth,
        auth_token=settings.auth_token,
        middleware=middleware,
        mask_error_details=settings.mask_error_details,
        lifespan=close_at_exit(database),
    )

    async def run_sql(ctx: Context | None, work: Any) -> Any:
        stop = threading.Event()
        deadline = Deadline(timeout_s, stop)
        try:
            return await in_worker_thread(partial(work, deadline), stop, ctx, timeout_s)
        except QueryRefused as exc:
            if ctx is not None:
                await ctx.warning(f"refused: {exc}")
            raise ToolError(str(exc)) from None

    async def fingerprint() -> str:
        """The data's version, asked off the event loop: on PostgreSQL it is a round trip."""
        return await run_sql(None, lambda _deadline: database.fingerprint())

    async def page(ctx: Context | None, sql: str, params: list | dict | None, max_rows: int, skip: int) -> QueryResult:
        started = time.perf_counter()
        columns, rows, more, version = await run_sql(ctx, partial(database.execute, sql, params, max_rows, skip))
        elapsed = round((time.perf_counter() - started) * 1000, 2)
        cursor = None
        if more:
            state = {
                "q": sql,
                "p": params,
                "n": max_rows,
                "o": skip + len(rows),
                "f": version,
                "expires": time.time() + CURSOR_TTL_S,
            }
            cursor = cursors.encode(state)
            if ctx is not None:
                await ctx.info(f"showing rows {skip + 1}-{skip + len(rows)}; more remain behind next_cursor")
        return QueryResult(
            columns=columns, rows=rows, row_count=len(rows), truncated=more, next_cursor=cursor, elapsed_ms=elapsed
        )

    @mcp.tool(annotations=READ_ONLY, output_schema=output_schema(QueryResult))
    async def query_database(
        query: Annotated[str, Field(max_length=MAX_SQL_CHARS)] = "",
        params: list[Any] | dict[str, Any] | None = None,
        max_rows: Annotated[int, Field(ge=1, le=MAX_ROWS_LIMIT)] | None = None,
        cursor: str | None = None,
        ctx: Context | None = None,
    ) -> ToolResult:
        """Run one read-only SQL statement (SELECT, WITH, EXPLAIN; on SQLite also pragma_* functions).

        Args:
            query: One SQL statement. Placeholders for values: ? or :name on SQLite, $1, $2 on PostgreSQL.
            params: Values for the placeholders: a list for ? and $1, an object for :name.
            max_rows: Rows per page (default from MCP_MAX_ROWS). Longer results come in pages.
            cursor: The next_cursor of a previous page, to continue that result; omit query then.
        """
        if cursor and (query.strip() or params is not None):
            raise ToolError("give either a query (with its params) or a cursor, not both")
        if cursor:
            try:
                state = cursors.decode(cursor)
            except QueryRefused as exc:
                raise ToolError(str(exc)) from None
            if state["f"] != await fingerprint():
                raise ToolError("the database changed since this cursor was made; rerun the query")
            return structured(await page(ctx, state["q"], state["p"], max_rows or state["n"], state["o"]))
        if not query.strip():
            raise ToolError("give a SQL query, or a cursor to continue a previous result")
        return structured(await page(ctx, query, params, max_rows or settings.max_rows, 0))

    @mcp.tool(annotations=READ_ONLY)
    async def ask_database(question: Annotated[str, Field(min_length=1, max_length=2000)], ctx: Context) -> AskResult:
        """Answer a question in plain words: the client's model writes the SQL, this server runs it read-only.

        Args:
            question: What you want to know about the data, for example "top five customers by spend".
        """
        capabilities = ctx.session.client_capabilities
        if capabilities is None or capabilities.sampling is None:
            raise ToolError(NO_SAMPLING)
        schema = await run_sql(None, database.schema_sql)
        try:
            reply = await ctx.session.create_message(
                messages=[SamplingMessage(role="user", content=TextContent(type="text", text=question))],
                system_prompt=f"{ASK_SYSTEM_PROMPT.format(dialect=database.dialect)}\n\n{schema}",
                max_tokens=800,
                related_request_id=ctx.request_id,
            )
        except MCPError as exc:  # no back-channel on this connection, or the user declined
            raise ToolError(f"{NO_SAMPLING} ({exc})") from None
        sql = extract_sql(getattr(reply.content, "text", "") or "")
        if not sql:
            raise ToolError("the client's model gave no SQL for that question; rephrase it")
        await ctx.info(f"ask_database runs: {sql}")
        return AskResult(question=question, sql=sql, result=await page(ctx, sql, None, settings.max_rows, 0))

    async def tables() -> TableList:
        summaries = await run_sql(None, database.list_tables)
        return TableList(tables=summaries[:MAX_LIST_ENTRIES], truncated=len(summaries) > MAX_LIST_ENTRIES)

    async def describe_one(name: str) -> TableDescription:
        return await run_sql(None, partial(database.describe_table, name))

    @mcp.tool(annotations=READ_ONLY)
    async def list_tables() -> TableList:
        """Every table and view in the database, with its row count (same as schema://tables)."""
        return await tables()

    @mcp.tool(annotations=READ_ONLY)
    async def describe_table(table: Annotated[str, Field(min_length=1, max_length=1000)]) -> TableDescription:
        """Columns, keys, indexes, row count and CREATE statement of one table or view.

        Args:
            table: The table or view name, as list_tables shows it.
        """
        return await describe_one(table)

    @mcp.tool(annotations=READ_ONLY)
    async def read_json(
        filepath: Annotated[str, Field(min_length=1, max_length=MAX_PATH_CHARS)],
        pointer: Annotated[str, Field(max_length=MAX_PATH_CHARS)] | None = None,
    ) -> JsonDocument:
        """Read a JSON file under the files root, whole or just the part a JSON Pointer names.

        Args:
            filepath: Path relative to the files root, for example "reports/2026-q3.json".
            pointer: RFC 6901 JSON Pointer such as "/contacts/0/email"; omit for the whole file.
        """

        def work() -> JsonDocument:
            path = confine(files_root, filepath)
            document = read_json_file(path, settings.max_file_bytes)
            value = resolve_pointer(document, pointer) if pointer is not None else document
            if value is not document or path.stat().st_size > MAX_RESULT_BYTES:
                size = len(json.dumps(value, ensure_ascii=False))
                if size > MAX_RESULT_BYTES:
                    raise PathRefused(
                        f"that part is {size} bytes of JSON, over the {MAX_RESULT_BYTES}-byte answer limit;"
                        " select a smaller part with a JSON Pointer such as /items/0"
                    )
            return JsonDocument(path=relative_name(files_root, path), pointer=pointer, value=value)

        try:
            return await anyio.to_thread.run_sync(work)
        except PathRefused as exc:
            raise ToolError(str(exc)) from None

    @mcp.tool(annotations=READ_ONLY)
    async def list_files(
        directory: Annotated[str, Field(min_length=1, max_length=MAX_PATH_CHARS)] = ".",
        pattern: Annotated[str, Field(min_length=1, max_length=1000)] = "*",
    ) -> FileList:
        """List entries under a folder of the files root that match a glob pattern.

        Args:
            directory: Folder relative to the files root; "." is the root itself.
            pattern: Glob over paths relative to that folder: "*" its entries, "*.json" its JSON
                files, "**/*.json" JSON files at any depth. Symlinks are listed, never followed.
        """

        def work() -> FileList:
            folder = confine(files_root, directory)
            if not folder.is_dir():
                raise PathRefused(f"{directory!r} is not a folder under the files root")
            return list_entries(files_root, folder, pattern, Deadline(timeout_s))

        try:
            return await anyio.to_thread.run_sync(work)
        except PathRefused as exc:
            raise ToolError(str(exc)) from None

    @mcp.resource("config://app/settings", mime_type="application/json")
    def app_settings() -> str:
        """The effective settings; secrets show only as set or unset."""
        return json.dumps(settings.public_view(), indent=2)

    @mcp.resource("schema://tables", mime_type="application/json")
    async def schema_tables() -> str:
        """Every table and view with its row count."""
        try:
            return (await tables()).model_dump_json(indent=2)
        except ToolError as exc:
            raise ResourceError(str(exc)) from None

    @mcp.resource("schema://tables/{table}", mime_type="application/json")
    async def schema_table(table: str) -> str:
        """Columns, foreign keys, indexes, row count and CREATE statement of one table or view."""
        try:
            return (await describe_one(table)).model_dump_json(indent=2)
        except ToolError as exc:
            raise ResourceError(str(exc)) from None

    @mcp.completion
    async def complete(ref: Any, argument: Any, context: Any) -> list[str]:
        if (
            isinstance(ref, ResourceTemplateReference)
            and ref.uri == "schema://tables/{table}"
            and argument.name == "table"
        ):
            names = await run_sql(None, database.table_names)
            typed = argument.value.lower()  # "boo" finds "books", and on PostgreSQL "public.books" too
            return [n for n in names if n.lower().startswith(typed) or n.lower().rpartition(".")[2].startswith(typed)]
        return []

    log.info("serving %s read-only, and JSON files under %s", settings.db_path or database, files_root)
    return mcp


def extract_sql(reply: str) -> str:
    """The SQL inside a model's reply, without code fences or a trailing semicolon."""
    fenced = re.search(r"```(?:sql)?\s*(.*?)```", reply, re.DOTALL | re.IGNORECASE)
    return (fenced[1] if fenced else reply).strip().rstrip(";").strip()


def configure_logging(level: str) -> None:
    """Our log lines go to stderr: stdout belongs to the protocol."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(level)
    logging.getLogger("fastmcp").setLevel(level)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--transport", choices=["stdio", "sse", "http", "streamable-http"], default="stdio")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind for sse/http (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port for sse/http (default 8000)")
    parser.add_argument(
        "--stateless", action="store_true", help="http: no sessions, so any of several processes can answer any request"
    )
    for name, field in Settings.model_fields.items():
        if name in ("auth_token", "cursor_secret"):
            continue  # secrets only from the environment: a flag would show in every process listing
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, dest=name, default=None, help=f"{field.description} (MCP_{name.upper()})")
    args = vars(parser.parse_args(argv))
    transport, host, port, stateless = args.pop("transport"), args.pop("host"), args.pop("port"), args.pop("stateless")
    if stateless and transport not in ("http", "streamable-http"):
        parser.error("--stateless needs --transport http")
    server = create_server(load_settings(**args))
    # Start-up leaves ~130,000 long-lived objects (FastMCP, the SDK, pydantic schemas): frozen, no
    # collection walks them again. A 10,000-row result allocates ~100,000 lists on its way out;
    # collecting every 10,000 allocations instead of 700 keeps the collector's share small. Together
    # they halve the time of such a call (benchmarks/bench.py); cycles are still collected.
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)
    if transport == "stdio":
        log.info("speaking MCP over stdio: connect a client such as Claude Desktop (Ctrl-C stops)")
        server.run("stdio", show_banner=False)
    else:
        server.run(transport, show_banner=False, host=host, port=port, stateless_http=stateless)


if __name__ == "__main__":
    main()
else:  # imported: by `fastmcp run server.py`, by the tests, or by `from server import mcp`
    mcp = create_server(load_settings())
