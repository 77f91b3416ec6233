"""The same server on a real PostgreSQL: every tool, the read-only guarantees under hostile input, and
stateless HTTP with two processes behind a (simulated) load balancer.

PostgreSQL comes from a throwaway cluster that the session starts itself (initdb and pg_ctl on a free
loopback port, as an unprivileged user) when PostgreSQL is installed, or from TEST_DATABASE_URL (a
postgresql:// URL of a superuser on a server the tests may use) when set. Without either the tests
skip and say how to enable them; under CI=true they fail instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import psycopg
import pytest
from fastmcp import Client
from fastmcp.client.transports import StdioTransport, StreamableHttpTransport

import server
from server import Settings, create_server
from test_server import (  # clean_environment is an autouse fixture: no developer settings leak in here either
    DEADLINE_MS,
    EXPECTED_TOOLS,
    HERE,
    MEMORY_CAP_KIB,
    PYTHON,
    WITHIN_S,
    answer_bytes,
    answer_text,
    answering,
    build_database,
    build_files,
    build_shop,
    call,
    clean_environment,  # noqa: F401
    error_of,
    free_port,
    is_clear_error,
    outcome,
    peak_rss,
    running,
    seconds_until_idle,
    serving,
    wire_client,
)

HOW_TO_ENABLE = (
    "install PostgreSQL (apt-get install postgresql: the tests start their own cluster)"
    " or set TEST_DATABASE_URL=postgresql://SUPERUSER:PASSWORD@HOST:PORT/postgres"
)

SCHEMA = """
CREATE TABLE authors (id int PRIMARY KEY, name text NOT NULL, born int);
CREATE TABLE books (
    id serial PRIMARY KEY,
    author_id int NOT NULL REFERENCES authors(id),
    title text NOT NULL DEFAULT 'untitled',
    price numeric(6, 2)
);
CREATE INDEX books_by_author ON books(author_id);
CREATE VIEW book_titles AS SELECT b.title, a.name FROM books b JOIN authors a ON a.id = b.author_id;
CREATE TABLE numbers (n int PRIMARY KEY);
CREATE TABLE oddities (
    id int PRIMARY KEY, blob bytea, amount numeric, happened timestamptz, day date, span interval,
    doc jsonb, tags text[], uid uuid, addr inet, ratio double precision, long text
);
CREATE SCHEMA archive;
CREATE TABLE archive.books (id int PRIMARY KEY, title text);
CREATE SEQUENCE tickets;

INSERT INTO authors VALUES (1, 'Ursula', 1929), (2, 'Stanisław', 1921);
INSERT INTO books (author_id, title, price)
    VALUES (1, 'The Dispossessed', 9.5), (1, 'Earthsea', 7.25), (2, 'Solaris', 8);
INSERT INTO numbers SELECT generate_series(1, 2500);
INSERT INTO oddities VALUES
    (1, '\\x0001ff', 12345678901234567890.123456789, '2026-03-01 12:30:00+00', '2026-03-01', '1 day 02:00:00',
     '{"a": [1, 2]}', '{x,y}', '00000000-0000-0000-0000-000000000001', '10.0.0.1', 'NaN', repeat('x', 10500)),
    (2, NULL, 0.0000000001, 'infinity', '-infinity', NULL, 'null', '{}', NULL, NULL, '-Infinity', '');
INSERT INTO archive.books VALUES (1, 'Old copy');
SELECT lo_from_bytea(4242, 'a large object');
"""

# The read-only role of the README, word for word (POSTGRES_SECTION.md); {role}, {password}, {database} filled in.
READ_ONLY_ROLE_RECIPE = """
CREATE ROLE {role} LOGIN PASSWORD '{password}'
    NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    CONNECTION LIMIT 20;
ALTER ROLE {role} SET default_transaction_read_only = on;
REVOKE ALL ON DATABASE {database} FROM PUBLIC;
GRANT CONNECT ON DATABASE {database} TO {role};
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO {role};
GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role};
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {role};
"""


# --- A real PostgreSQL: a throwaway cluster, or TEST_DATABASE_URL --------------------------------


class Unavailable(Exception):
    """PostgreSQL cannot be had here: the tests skip (or fail under CI=true) with this reason."""


def postgres_program(name: str) -> str | None:
    """A PostgreSQL server program: on PATH, or where Debian's packages put it."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]))
    return str(versions[-1]) if versions else None


@contextlib.contextmanager
def throwaway_cluster() -> Iterator[str]:
    """initdb + pg_ctl in a temporary folder on a free loopback port; yields a superuser URL, stops on exit.

    PostgreSQL refuses to run as root, so as root the cluster belongs to the `postgres` user (or `nobody`).
    """
    initdb, pg_ctl = postgres_program("initdb"), postgres_program("pg_ctl")
    if not (initdb and pg_ctl):
        raise Unavailable("PostgreSQL's initdb and pg_ctl are not installed")
    folder = Path(tempfile.mkdtemp(prefix="safe-data-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        user = "postgres"
        try:
            pwd.getpwnam(user)
        except KeyError:
            user = "nobody"
        shutil.chown(folder, user)
        as_user = ["runuser", "-u", user, "--"]
    data, port = folder / "data", free_port()

    def run(*command: str) -> None:
        result = subprocess.run([*as_user, *command], cwd=folder, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            log = (folder / "log").read_text(errors="replace")[-2000:] if (folder / "log").exists() else ""
            raise Unavailable(f"{Path(command[0]).name} failed: {result.stderr.strip()[-2000:]} {log}")

    try:
        run(initdb, "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync")
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100"
        run(pg_ctl, "-D", str(data), "-l", str(folder / "log"), "-o", options, "-w", "-t", "60", "start")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"],
            cwd=folder,
            capture_output=True,
            timeout=60,
            check=False,
        )
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def admin_url() -> Iterator[str]:
    """A superuser URL: TEST_DATABASE_URL, or a cluster started for this test session."""
    if os.environ.get("TEST_DATABASE_URL"):
        yield os.environ["TEST_DATABASE_URL"]
        return
    stack = contextlib.ExitStack()
    try:
        url = stack.enter_context(throwaway_cluster())
    except (Unavailable, OSError, subprocess.SubprocessError) as exc:
        message = f"PostgreSQL is not available ({exc}); to run these tests, {HOW_TO_ENABLE}"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    with stack:
        yield url


def url_for(base: str, *, user: str, password: str, database: str) -> str:
    parts = urllib.parse.urlsplit(base)
    netloc = f"{urllib.parse.quote(user)}:{urllib.parse.quote(password)}@{parts.hostname or ''}"
    netloc += f":{parts.port}" if parts.port else ""
    return urllib.parse.urlunsplit((parts.scheme, netloc, f"/{database}", parts.query, ""))


@dataclass
class Library:
    """One test database and the roles that reach it, each as a URL."""

    database: str
    admin: str  # superuser: builds, checks and is refused by the server
    owner: str  # owns every table, so it could write anything: the worst role that is not privileged
    reader: str  # the README's read-only role
    files: str  # may read server files and run programs, like a superuser


@pytest.fixture(scope="session")
def library(admin_url: str) -> Iterator[Library]:
    suffix = secrets.token_hex(3)
    database = f"safe_data_{suffix}"
    roles = {kind: f"safe_data_{kind}_{suffix}" for kind in ("owner", "reader", "files")}
    passwords = {kind: secrets.token_hex(8) for kind in roles}
    urls = {kind: url_for(admin_url, user=roles[kind], password=passwords[kind], database=database) for kind in roles}
    base = urllib.parse.urlsplit(admin_url)
    admin = url_for(admin_url, user=base.username or "postgres", password=base.password or "", database=database)
    try:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            for kind in ("owner", "files"):
                conn.execute(f"CREATE ROLE {roles[kind]} LOGIN PASSWORD '{passwords[kind]}'")
            conn.execute(
                f"GRANT pg_read_server_files, pg_write_server_files, pg_execute_server_program TO {roles['files']}"
            )
            conn.execute(f"CREATE DATABASE {database} OWNER {roles['owner']}")
        with psycopg.connect(urls["owner"], autocommit=True) as conn:
            conn.execute(SCHEMA)
            conn.execute("SELECT pg_stat_force_next_flush()")  # the write counters settle before any test
        with psycopg.connect(admin, autocommit=True) as conn:
            recipe = READ_ONLY_ROLE_RECIPE.format(role=roles["reader"], password=passwords["reader"], database=database)
            conn.execute(recipe)
            conn.execute(f"GRANT CONNECT ON DATABASE {database} TO {roles['owner']}, {roles['files']}")
        yield Library(database=database, admin=admin, **urls)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
            for role in roles.values():
                conn.execute(f"DROP ROLE IF EXISTS {role}")


@pytest.fixture
def files_root(tmp_path: Path) -> Path:
    return build_files(tmp_path / "files")


@pytest.fixture
def make_server(library: Library, files_root: Path):
    def make(url: str | None = None, **overrides):
        return create_server(Settings(database_url=url or library.owner, files_root=files_root, **overrides))

    return make


def admin_query(library: Library, sql: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(library.admin, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def snapshot(library: Library) -> dict[str, object]:
    """Everything a statement could change: every table's rows, sequences, large objects, the catalog's
    size, and the insert/update/delete counters (which count even rolled-back writes)."""
    with psycopg.connect(library.admin, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables"
            " WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1"
        ).fetchall()
        state: dict[str, object] = {
            table: conn.execute(
                f"SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM {table} t"
            ).fetchone()
            for (table,) in tables
        }
        state["sequences"] = conn.execute("SELECT sequencename, last_value FROM pg_sequences ORDER BY 1").fetchall()
        state["large objects"] = conn.execute(
            "SELECT count(DISTINCT loid), md5(coalesce(string_agg(encode(data, 'hex'), '' ORDER BY loid, pageno), ''))"
            " FROM pg_largeobject"
        ).fetchone()
        state["catalog"] = conn.execute(
            "SELECT (SELECT count(*) FROM pg_class), (SELECT count(*) FROM pg_proc),"
            " (SELECT count(*) FROM pg_namespace), (SELECT count(*) FROM pg_roles), (SELECT count(*) FROM pg_database),"
            " (SELECT count(*) FROM pg_largeobject_metadata), (SELECT count(*) FROM pg_prepared_xacts)"
        ).fetchone()
        state["writes"] = conn.execute(
            "SELECT sum(n_tup_ins), sum(n_tup_upd), sum(n_tup_del) FROM pg_stat_user_tables"
        ).fetchone()
    return state


@pytest.fixture
def unchanged(library: Library) -> Iterator[None]:
    """The database is exactly as it was when the test ends."""
    before = snapshot(library)
    yield
    assert snapshot(library) == before


async def alive(client: Client) -> None:
    assert (await call(client, "query_database", query="SELECT count(*) FROM books"))["rows"] == [[3]]


# --- The same tools on PostgreSQL -----------------------------------------------------------------------


async def test_tool_list_is_the_same(make_server):
    async with Client(make_server()) as client:
        tools = {tool.name: list(tool.input_schema.get("properties", {})) for tool in await client.list_tools()}
    assert tools == EXPECTED_TOOLS


async def test_query_returns_columns_and_rows(make_server):
    async with Client(make_server()) as client:
        result = await call(client, "query_database", query="SELECT id, title, price FROM books ORDER BY id")
    assert result["columns"] == ["id", "title", "price"]
    assert result["rows"] == [[1, "The Dispossessed", "9.50"], [2, "Earthsea", "7.25"], [3, "Solaris", "8.00"]]
    assert (result["row_count"], result["truncated"], result["next_cursor"]) == (3, False, None)


async def test_empty_result_still_names_its_columns(make_server):
    async with Client(make_server()) as client:
        result = await call(client, "query_database", query="SELECT id, title FROM books WHERE false")
    assert result["columns"] == ["id", "title"] and result["rows"] == []


async def test_positional_params_are_dollar_numbered(make_server):
    async with Client(make_server()) as client:
        result = await call(
            client, "query_database", query="SELECT title FROM books WHERE price > $1 AND title LIKE 'The%'", params=[8]
        )
    assert result["rows"] == [["The Dispossessed"]]


@pytest.mark.parametrize(
    ("sql", "params", "expected"),
    [
        ("SELECT $1", {"a": 1}, "pass params as a list"),
        ("SELECT $1", [], "parameters do not match"),
        ("SELECT $2", [1], "parameters do not match"),
        ("SELECT $1", [{"nested": "object"}], "parameters do not match"),
        ("SELECT $1", ["\ud800"], "Unicode"),
        ("SELEC 1", None, "syntax error"),
        ("SELECT * FROM missing_table", None, "does not exist"),
        ("SELECT 1 / 0", None, "division by zero"),
        ("-- nothing but a comment", None, "no columns"),
        ("SET work_mem = '1GB'", None, "no columns"),
        ("COPY books TO STDOUT", None, "COPY is not available"),
    ],
)
async def test_malformed_queries_get_clear_errors(make_server, sql, params, expected):
    async with Client(make_server()) as client:
        message = await error_of(client, "query_database", query=sql, params=params)
        await alive(client)
    assert expected.lower() in message.lower(), message


async def test_values_always_serialize(make_server):
    async with Client(make_server()) as client:
        result = await call(client, "query_database", query="SELECT * FROM oddities ORDER BY id")
    first, second = (dict(zip(result["columns"], row, strict=True)) for row in result["rows"])
    assert first["blob"] == {"$blob": "AAH/", "bytes": 3}
    assert first["amount"] == "12345678901234567890.123456789"  # numeric: exact, as PostgreSQL's text
    assert second["amount"] == "0.0000000001"
    assert (first["happened"], first["day"], first["span"]) == (
        "2026-03-01 12:30:00+00",
        "2026-03-01",
        "1 day 02:00:00",
    )
    assert (second["happened"], second["day"]) == ("infinity", "-infinity")
    assert first["doc"] == '{"a": [1, 2]}' and first["tags"] == ["x", "y"] and second["tags"] == []
    assert (first["uid"], first["addr"]) == ("00000000-0000-0000-0000-000000000001", "10.0.0.1")
    assert (first["ratio"], second["ratio"]) == ("NaN", "-Infinity")
    assert first["long"].endswith("…[10500 chars]")


async def test_pages_return_every_row_exactly_once(make_server):
    seen: list[int] = []
    async with Client(make_server()) as client:
        result = await call(client, "query_database", query="SELECT n FROM numbers ORDER BY n DESC", max_rows=700)
        seen += [row[0] for row in result["rows"]]
        while result["next_cursor"]:
            result = await call(client, "next_page", cursor=result["next_cursor"])
            seen += [row[0] for row in result["rows"]]
    assert seen == list(range(2500, 0, -1))


async def test_pages_come_from_one_snapshot_while_rows_change(make_server, library):
    async with Client(make_server()) as client:
        page = await call(client, "query_database", query="SELECT n FROM numbers", max_rows=500)
        seen = [row[0] for row in page["rows"]]
        with psycopg.connect(library.owner, autocommit=True) as writer:  # changes, then put back
            writer.execute("DELETE FROM numbers WHERE n > 2000")
            writer.execute("INSERT INTO numbers SELECT g FROM generate_series(2001, 2500) g")
            writer.execute("UPDATE numbers SET n = n WHERE n <= 10")  # new row versions at the end of the table
        while page["next_cursor"]:
            page = await call(client, "next_page", cursor=page["next_cursor"])
            seen += [row[0] for row in page["rows"]]
    assert sorted(seen) == list(range(1, 2501))  # every row of the first page's snapshot, exactly once


async def test_list_tables_names_schemas_and_counts_rows(make_server):
    async with Client(make_server()) as client:
        result = await call(client, "list_tables")
    assert {t["name"]: (t["type"], t["row_count"], t["row_count_kind"]) for t in result["tables"]} == {
        "archive.books": ("table", 1, "exact"),
        "public.authors": ("table", 2, "exact"),
        "public.book_titles": ("view", None, "unknown"),  # counting a view runs its query: not done
        "public.books": ("table", 3, "exact"),
        "public.numbers": ("table", 2500, "exact"),
        "public.oddities": ("table", 2, "exact"),
    }


async def test_describe_table_gives_columns_keys_indexes(make_server):
    async with Client(make_server()) as client:
        result = await call(client, "describe_table", table="public.books")
    assert [(c["name"], c["type"], c["nullable"], c["primary_key"]) for c in result["columns"]] == [
        ("id", "integer", False, 1),
        ("author_id", "integer", False, 0),
        ("title", "text", False, 0),
        ("price", "numeric(6,2)", True, 0),
    ]
    assert result["columns"][2]["default"] == "'untitled'::text"
    assert result["foreign_keys"] == [
        {"columns": ["author_id"], "references_table": "public.authors", "references_columns": ["id"]}
    ]
    assert {i["name"]: (i["columns"], i["unique"]) for i in result["indexes"]} == {
        "books_by_author": (["author_id"], False),
        "books_pkey": (["id"], True),
    }
    assert result["row_count"] == 3
    assert result["create_sql"].startswith(
        'CREATE TABLE "public"."books" (\n    "id" integer NOT NULL DEFAULT nextval('
    )
    assert 'CONSTRAINT "books_pkey" PRIMARY KEY (id)' in result["create_sql"]


@pytest.mark.parametrize(("name", "expected"), [("books", "public.books"), ("archive.books", "archive.books")])
async def test_describe_accepts_bare_and_qualified_names(make_server, name, expected):
    async with Client(make_server()) as client:
        result = await call(client, "describe_table", table=name)
    assert result["name"] == expected


async def test_describe_view(make_server):
    async with Client(make_server()) as client:
        result = await call(client, "describe_table", table="book_titles")
    assert result["type"] == "view" and [c["name"] for c in result["columns"]] == ["title", "name"]
    assert result["create_sql"].startswith('CREATE VIEW "public"."book_titles" AS\n SELECT')


@pytest.mark.parametrize("name", ["nope", "books; DROP TABLE books", "public.books' OR '1'='1", "pg_catalog.pg_class"])
async def test_describe_unknown_table_names_the_tables(make_server, name, unchanged):
    async with Client(make_server()) as client:
        message = await error_of(client, "describe_table", table=name)
    assert "no table or view named" in message and "archive.books, public.authors" in message


async def test_schema_resources_accept_schema_dot_table(make_server):
    async with Client(make_server()) as client:
        tables = (await client.read_resource("schema://tables"))[0].text
        books = (await client.read_resource("schema://tables/public.books"))[0].text
        tool = await call(client, "describe_table", table="public.books")
    assert "public.numbers" in tables
    assert json.loads(books) == tool


async def test_table_name_completion(make_server):
    ref = {"type": "ref/resource", "uri": "schema://tables/{table}"}
    async with Client(make_server()) as client:
        bare = await client.complete(ref=ref, argument={"name": "table", "value": "boo"})
        qualified = await client.complete(ref=ref, argument={"name": "table", "value": "public.b"})
    assert bare.values == ["archive.books", "public.book_titles", "public.books"]
    assert qualified.values == ["public.book_titles", "public.books"]


async def test_settings_resource_shows_the_url_only_as_set(make_server, library):
    password = urllib.parse.urlsplit(library.owner).password
    async with Client(make_server(pool_size=3)) as client:
        text = (await client.read_resource("config://app/settings"))[0].text
    view = json.loads(text)
    assert view["database_url"] == "set" and view["pool_size"] == 3 and view["db_path"] is None
    assert password not in text


async def test_the_audit_log_holds_neither_a_value_postgresql_quotes_nor_the_url(make_server, library, tmp_path):
    log, value = tmp_path / "audit.jsonl", "Zq9-not-a-number"
    async with Client(make_server(audit_log=log)) as client:
        message = await error_of(client, "query_database", query="SELECT $1::int", params=[value])
    assert value in message  # PostgreSQL quotes the value it could not read
    (line,) = [json.loads(text) for text in log.read_text().splitlines()]
    assert line["outcome"] == "refused" and "invalid input syntax" in line["reason"] and line["params"] == 1
    text = log.read_text()
    assert value not in text and urllib.parse.urlsplit(library.owner).password not in text and "postgresql:" not in text


async def test_ask_database_tells_the_model_it_is_postgresql(make_server):
    handler, asked = answering("SELECT name FROM authors ORDER BY born")
    async with Client(make_server(), mode="legacy", sampling_handler=handler) as client:
        result = await call(client, "ask_database", question="who was born first?")
    assert result["result"]["rows"] == [["Stanisław"], ["Ursula"]]
    prompt = asked[0][1].system_prompt
    schema = json.loads(asked[0][0][0].content.text)["schema"]
    assert "PostgreSQL database" in prompt and "books" not in prompt
    assert {"name": "public.books", "type": "table", "columns": ["id integer", "author_id integer", "title text",
            "price numeric(6,2)"]} in schema  # fmt: skip


async def test_the_readme_read_only_role_reads(make_server, library, unchanged):
    async with Client(make_server(library.reader)) as client:
        await alive(client)
        message = await error_of(client, "query_database", query="DELETE FROM books")
    assert "only read-only statements are allowed" in message


async def test_pool_queues_calls_beyond_its_size(make_server, library):
    async with Client(make_server(pool_size=2)) as client:
        calls = [call(client, "query_database", query="SELECT pg_sleep(0.3), $1::int", params=[i]) for i in range(6)]
        started = time.monotonic()
        results = await asyncio.gather(*calls)
        elapsed = time.monotonic() - started
        for _ in range(40):  # the one-off role check's backend may take a moment to leave pg_stat_activity
            connections = admin_query(
                library,
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'safe-data' AND datname = %s",
                (library.database,),
            )[0][0]
            if connections <= 2:
                break
            await asyncio.sleep(0.05)
    assert sorted(r["rows"][0][1] for r in results) == list(range(6))
    assert elapsed >= 0.85  # three rounds of two
    assert connections <= 2


# --- Read-only, enforced by PostgreSQL: hostile input, family by family ---------------------------------
# Each case runs as the role that owns every table (it could write anything), then the database must be
# exactly as before (`unchanged`) and the server still answering.

HOSTILE = {
    # COMMIT/ROLLBACK tricks: the official Postgres MCP server ran these through the simple protocol
    # and the DROP committed. The extended protocol takes exactly one statement.
    "COMMIT; BEGIN READ WRITE; DROP TABLE books; COMMIT": "one SQL statement",
    "ROLLBACK; START TRANSACTION READ WRITE; DELETE FROM books; COMMIT": "one SQL statement",
    "SELECT 1; COMMIT; BEGIN; SET TRANSACTION READ WRITE; UPDATE books SET price = 0; COMMIT": "one SQL statement",
    "END; SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE; TRUNCATE books": "one SQL statement",
    # writes, alone or inside a data-modifying CTE: the READ ONLY transaction
    "DELETE FROM books": "cannot execute DELETE in a read-only transaction",
    # refused twice over: a cursor may not modify data, nor may a read-only transaction
    "WITH gone AS (DELETE FROM books RETURNING *) SELECT count(*) FROM gone": "only read-only statements",
    "WITH cheap AS (UPDATE books SET price = 0 RETURNING id) SELECT * FROM cheap": "only read-only statements",
    "WITH added AS (INSERT INTO authors VALUES (9, 'x', 1) RETURNING id) SELECT * FROM added": "only read-only",
    "MERGE INTO authors USING books ON false WHEN NOT MATCHED THEN INSERT VALUES (9, 'x', 1)": "cannot execute MERGE",
    "EXPLAIN ANALYZE DELETE FROM books": "cannot execute DELETE",
    "TRUNCATE books": "cannot execute TRUNCATE",
    "DROP TABLE books": "cannot execute DROP TABLE",
    "ALTER TABLE books ADD COLUMN x int": "cannot execute ALTER TABLE",
    "COMMENT ON TABLE books IS 'x'": "cannot execute COMMENT",
    "GRANT ALL ON books TO PUBLIC": "cannot execute GRANT",
    "VACUUM books": "cannot run inside a transaction block",
    "COPY books FROM PROGRAM 'echo 9,1,x,1'": "external program",
    # files and programs: PostgreSQL's own privileges (a role that has them is refused, below)
    "COPY (SELECT 1) TO PROGRAM 'touch MARKER'": "pg_execute_server_program",
    "COPY books TO 'MARKER'": "pg_write_server_files",
    "SELECT pg_read_file('/etc/passwd')": "permission denied",
    "SELECT pg_read_binary_file('/etc/hostname')": "permission denied",
    "SELECT * FROM pg_ls_dir('.')": "permission denied",
    # large objects: server-side import and export need privileges; the rest works in a read-only
    # transaction, so only the rollback undoes it
    "SELECT lo_import('/etc/hostname')": "permission denied",
    "SELECT lo_export(4242, 'MARKER')": "permission denied",
    "SELECT lo_from_bytea(0, 'new object')": None,
    "SELECT lo_create(0)": None,
    "SELECT lo_put(4242, 0, 'overwritten')": None,
    "SELECT lo_unlink(4242)": None,
    "SELECT lo_truncate(lo_open(4242, 131072), 0)": None,
    # sequences
    "SELECT nextval('tickets')": "cannot execute nextval()",
    "SELECT nextval('books_id_seq')": "cannot execute nextval()",
    "SELECT setval('books_id_seq', 1000)": "cannot execute setval()",
    # temporary tables
    "CREATE TEMP TABLE scratch (x int)": "cannot execute CREATE TABLE",
    "CREATE TEMP TABLE scratch AS SELECT * FROM books": "cannot execute CREATE TABLE AS",
    "SELECT * INTO TEMP scratch FROM books": "cannot execute SELECT INTO",
    "DO $$BEGIN CREATE TEMP TABLE scratch (x int); END$$": "cannot execute CREATE TABLE",
}


@pytest.fixture
def marker() -> Iterator[Path]:
    """A path the database server could write to, which must still not exist after the call."""
    folder = Path(tempfile.mkdtemp(prefix="safe-data-marker-"))
    folder.chmod(0o777 | stat.S_ISVTX)
    yield folder / "pwned"
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize(("sql", "expected"), HOSTILE.items(), ids=[s[:60] for s in HOSTILE])
async def test_hostile_statement_changes_nothing(make_server, marker, unchanged, sql, expected):
    async with Client(make_server()) as client:
        result = await client.call_tool(
            "query_database", {"query": sql.replace("MARKER", str(marker))}, raise_on_error=False
        )
        await alive(client)
    if expected:
        assert result.is_error and expected.lower() in result.content[0].text.lower(), result.content[0].text
    assert not marker.exists()


# A first statement that tries to leave the session writable, then a write in a later call on the same
# (only) pooled connection: each call starts its own READ ONLY transaction, and SET is rolled back with it.
LEFTOVERS = [
    "COMMIT",
    "ROLLBACK",
    "COMMIT AND CHAIN",
    "BEGIN READ WRITE",
    "SET TRANSACTION READ WRITE",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
    "SET default_transaction_read_only = off",
    "SELECT set_config('default_transaction_read_only', 'off', false)",
    "SELECT set_config('transaction_read_only', 'off', false)",
]


@pytest.mark.parametrize("first", LEFTOVERS)
async def test_transaction_tricks_do_not_outlive_their_call(make_server, unchanged, first):
    async with Client(make_server(pool_size=1)) as client:
        await client.call_tool("query_database", {"query": first}, raise_on_error=False)
        message = await error_of(client, "query_database", query="DELETE FROM books")
        await alive(client)
    assert "only read-only statements are allowed" in message


@pytest.mark.parametrize(
    ("first", "check", "expected"),
    [
        (
            "SELECT set_config('statement_timeout', '0', false)",
            "SELECT current_setting('statement_timeout') <> '0'",
            True,
        ),
        ("SET statement_timeout = 0", "SELECT current_setting('statement_timeout') <> '0'", True),
        ("SET search_path = archive", "SELECT count(*)::text FROM books", "3"),
        ("SELECT set_config('search_path', 'archive', false)", "SELECT count(*)::text FROM books", "3"),
        ("PREPARE sneaky AS SELECT 1", "SELECT count(*)::text FROM pg_prepared_statements", "0"),
        (
            "DECLARE held CURSOR WITH HOLD FOR SELECT 1",
            "SELECT count(*)::text FROM pg_cursors WHERE name = 'held'",
            "0",
        ),
        ("LISTEN library_events", "SELECT count(*)::text FROM pg_listening_channels()", "0"),
    ],
)
async def test_session_settings_do_not_outlive_their_call(make_server, unchanged, first, check, expected):
    async with Client(make_server(pool_size=1, query_timeout_ms=1234)) as client:
        await client.call_tool("query_database", {"query": first}, raise_on_error=False)
        result = await call(client, "query_database", query=check)
    assert result["rows"] == [[expected]]


async def test_connection_settings_are_in_force(make_server):
    checks = {
        "SHOW default_transaction_read_only": "on",
        "SHOW transaction_read_only": "on",
        "SHOW transaction_isolation": "repeatable read",  # one snapshot, whatever the statement
        # the statement's own limit: what is left of the call's 1234 ms
        "SELECT current_setting('statement_timeout')::interval BETWEEN '1 ms' AND '1234 ms'": True,
        # a transaction held open for later pages ends after its idle time (MCP_RESULT_IDLE_S) and a second
        "SHOW idle_in_transaction_session_timeout": "121s",
        "SHOW client_connection_check_interval": "1s",  # a killed worker's backend ends by itself
    }
    async with Client(make_server(query_timeout_ms=1234)) as client:
        for sql, expected in checks.items():
            assert (await call(client, "query_database", query=sql))["rows"] == [[expected]], sql


async def test_pg_sleep_past_the_deadline_is_stopped_on_the_server(make_server, library):
    async with Client(make_server(query_timeout_ms=1000)) as client:
        started = time.monotonic()
        message = await error_of(client, "query_database", query="SELECT pg_sleep(30)")
        elapsed = time.monotonic() - started
        await alive(client)
    assert "1000 ms deadline" in message and elapsed < 5
    assert await sleeping_backends(library) == 0


async def test_lock_and_sleep_releases_the_table_at_the_deadline(make_server, library, unchanged):
    sql = "DO $$BEGIN LOCK TABLE books IN ACCESS EXCLUSIVE MODE; PERFORM pg_sleep(30); END$$"
    async with Client(make_server(query_timeout_ms=300)) as client:
        message = await error_of(client, "query_database", query=sql)
        assert "deadline" in message
        assert readable_by_others(library)


async def sleeping_backends(library: Library) -> int:
    """Backends of this server still running a pg_sleep, after at most two seconds."""
    for _ in range(20):
        (count,) = admin_query(
            library,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'safe-data' AND state = 'active'"
            " AND query LIKE '%%pg_sleep%%'",
        )[0]
        if count == 0:
            return 0
        await asyncio.sleep(0.1)  # the in-process server shares this event loop
    return count


def readable_by_others(library: Library) -> bool:
    """Another session can read books at once: no lock of ours is left on it."""
    with psycopg.connect(library.admin, autocommit=True) as conn:
        conn.execute("SET lock_timeout = '1s'")
        try:
            conn.execute("SELECT count(*) FROM books").fetchone()
        except psycopg.errors.LockNotAvailable:
            return False
    return True


async def test_cancelled_call_cancels_the_statement_on_the_server(make_server, library):
    async with Client(make_server(query_timeout_ms=30_000)) as client:
        task = asyncio.create_task(client.call_tool("query_database", {"query": "SELECT pg_sleep(30)"}))
        for _ in range(50):
            if admin_query(library, "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)'")[0][0]:
                break
            await asyncio.sleep(0.1)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert await sleeping_backends(library) == 0
        await alive(client)


@pytest.mark.parametrize(
    "sql",
    ["LOCK TABLE books IN ACCESS EXCLUSIVE MODE", "SELECT pg_advisory_lock(42)", "SELECT pg_advisory_lock_shared(42)"],
)
async def test_locks_end_with_their_call(make_server, library, unchanged, sql):
    async with Client(make_server(pool_size=1)) as client:
        await client.call_tool("query_database", {"query": sql}, raise_on_error=False)
        await alive(client)
        assert readable_by_others(library)
        with psycopg.connect(library.admin, autocommit=True) as conn:  # the pooled connection is still open
            assert conn.execute("SELECT pg_try_advisory_lock(42)").fetchone() == (True,)


@pytest.mark.parametrize("sql", ["NOTIFY library_events, 'x'", "SELECT pg_notify('library_events', 'x')"])
async def test_notify_reaches_no_listener(make_server, library, sql):
    with psycopg.connect(library.admin, autocommit=True) as listener:
        listener.execute("LISTEN library_events")
        async with Client(make_server()) as client:
            await client.call_tool("query_database", {"query": sql}, raise_on_error=False)
            await alive(client)
        assert list(listener.notifies(timeout=0.5, stop_after=1)) == []
        with psycopg.connect(library.admin, autocommit=True) as other:  # the listener does hear a real one
            other.execute("NOTIFY library_events, 'control'")
        assert [n.payload for n in listener.notifies(timeout=5, stop_after=1)] == ["control"]


@pytest.mark.parametrize("who", ["admin", "files"])
def test_roles_that_reach_files_are_refused_at_start(make_server, library, who):
    with pytest.raises(SystemExit) as stopped:
        make_server(getattr(library, who))
    message = str(stopped.value)
    assert ("is a superuser" if who == "admin" else "can act as pg_execute_server_program") in message
    assert "connect as a role that can only read" in message and "bad setting MCP_DATABASE_URL" in message
    password = urllib.parse.urlsplit(getattr(library, who)).password
    assert not password or password not in message


@pytest.mark.parametrize("wrong", ["database", "role"])
def test_a_login_postgresql_refuses_stops_the_start(library, files_root, wrong):
    parts = urllib.parse.urlsplit(library.reader)
    url = urllib.parse.urlunsplit(
        parts._replace(path="/no_such_database")
        if wrong == "database"
        else parts._replace(netloc=f"nobody@{parts.hostname}:{parts.port}")
    )
    with pytest.raises(SystemExit) as stopped:
        create_server(Settings(database_url=url, files_root=files_root))
    assert "PostgreSQL refused it" in str(stopped.value) and "does not exist" in str(stopped.value)


async def test_unreachable_server_is_a_warning_then_a_clear_error_not_a_crash(files_root, caplog):
    port = free_port()
    url = f"postgresql://reader:secret@127.0.0.1:{port}/nowhere"
    server = create_server(Settings(database_url=url, files_root=files_root, query_timeout_ms=2000))
    assert any("cannot reach PostgreSQL now" in r.getMessage() for r in caplog.records)  # it starts all the same
    async with Client(server) as client:
        message = await error_of(client, "query_database", query="SELECT 1")
        assert (await call(client, "read_json", filepath="nested/item.json"))["value"] == {"id": 7}
    assert "cannot reach PostgreSQL" in message
    assert not any(secret in message for secret in ("secret", "127.0.0.1", str(port), "reader"))  # the log has those


# --- Settings, start-up and the optional driver -----------------------------------------------------------


def run_python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "-c", code],
        cwd=HERE,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_sqlite_never_imports_psycopg():
    result = run_python("import sys, server; assert 'psycopg' not in sys.modules, 'imported'")
    assert result.returncode == 0, result.stderr


def test_missing_driver_says_which_extra_to_install():
    code = "import sys; sys.modules['psycopg'] = None; import server; server.main([])"
    result = run_python(code, env={"DATABASE_URL": "postgresql://reader@127.0.0.1:1/db"})
    assert result.returncode != 0 and "safe-data-mcp[postgres]" in result.stderr


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"DATABASE_URL": "mysql://x@y/z"}, "only postgresql:// URLs"),
        ({"MCP_DATABASE_URL": "sqlite:///x.db"}, "only postgresql:// URLs"),
        ({"DATABASE_URL": "postgresql://x@y/z", "MCP_DB_PATH": __file__}, "not both"),
        ({"MCP_POOL_SIZE": "0"}, "greater than or equal to 1"),
    ],
)
def test_bad_postgres_setting_stops_startup_with_one_line(env, expected):
    result = run_python("import server; server.mcp", env=env)  # as `fastmcp run server.py` builds it
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1 and expected in lines[0], result.stderr
    assert any(f"bad setting {name}:" in lines[0] for name in env)  # the very name the user set


async def test_stdio_with_the_database_url_flag(library, files_root):
    transport = StdioTransport(
        command=PYTHON,
        args=["server.py", "--database-url", library.owner, "--files-root", str(files_root)],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        cwd=str(HERE),
    )
    async with Client(transport) as client:
        tables = await call(client, "list_tables")
        assert "public.books" in [t["name"] for t in tables["tables"]]
        await alive(client)


# --- Stateless HTTP: two processes, one database, a client that alternates between them --------------------


class RoundRobin(httpx2.AsyncBaseTransport):
    """A load balancer in miniature: each request goes to the next port in turn."""

    def __init__(self, ports: list[int]):
        self.inner = httpx2.AsyncHTTPTransport()
        self.ports = itertools.cycle(ports)
        self.served: list[int] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        port = next(self.ports)
        self.served.append(port)
        request.url = request.url.copy_with(port=port)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_stateless_http_processes_behind_a_load_balancer(library, files_root):
    ports = [free_port(), free_port()]
    env = {
        "DATABASE_URL": library.owner,
        "MCP_FILES_ROOT": str(files_root),
        "MCP_CURSOR_SECRET": "shared-by-every-process",
        "MCP_AUTH_TOKEN": "t0ken",
        "PYTHONUNBUFFERED": "1",
    }
    balancer = RoundRobin(ports)

    def client_factory(**kwargs) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(transport=balancer, **kwargs)

    launch = ["server.py", "--transport", "http", "--stateless"]
    with (
        serving(*launch, env=env, port=ports[0]) as url,
        serving(*launch, env=env, port=ports[1]),
    ):
        transport = StreamableHttpTransport(url, auth="t0ken", httpx_client_factory=client_factory)
        async with Client(transport) as client:
            assert {t.name for t in await client.list_tools()} == set(EXPECTED_TOOLS)
            first = await call(client, "query_database", query="SELECT n FROM numbers ORDER BY n", max_rows=400)
            # the result is held open by the process that answered; the next call reaches the other one
            message = await error_of(client, "next_page", cursor=first["next_cursor"])
            assert "another server process" in message and "rerun the query" in message
            whole = await call(client, "query_database", query="SELECT n FROM numbers ORDER BY n", max_rows=2500)
            assert [row[0] for row in whole["rows"]] == list(range(1, 2501))
            assert (await call(client, "describe_table", table="books"))["row_count"] == 3
            assert (await call(client, "read_json", filepath="nested/item.json"))["value"] == {"id": 7}
            assert "only read-only" in await error_of(client, "query_database", query="DELETE FROM books")
    assert set(balancer.served) == set(ports) and len(balancer.served) >= 8


# --- Big, busy databases: pages from one snapshot, counts that stay fast ------------------------------


@pytest.fixture(scope="session")
def big(library: Library) -> Iterator[str]:
    """A database of its own (the `unchanged` snapshots would read it all) with `events`: 1,000,000 rows,
    ~70 MB, big enough for synchronized sequential scans; as the owner's URL."""
    database = f"{library.database}_big"
    admin = urllib.parse.urlsplit(library.admin)
    owner = urllib.parse.urlsplit(library.owner)
    with psycopg.connect(library.admin.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {database} OWNER {owner.username}")
    url = urllib.parse.urlunsplit(owner._replace(path=f"/{database}"))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE events (id int PRIMARY KEY, payload text NOT NULL)")
        conn.execute("INSERT INTO events SELECT g, md5(g::text) FROM generate_series(1, 1000000) g")
        conn.execute("CREATE TABLE tiny (x int)")
        conn.execute("INSERT INTO tiny VALUES (1), (2), (3)")
        conn.execute("ANALYZE")
    try:
        yield url
    finally:
        with psycopg.connect(urllib.parse.urlunsplit(admin._replace(path="/postgres")), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


SCANNER = """
import psycopg, sys
with psycopg.connect(sys.argv[1], autocommit=True) as conn:
    print("scanning", flush=True)
    while True:  # another session's full scans: a rerun query would join them mid-table
        conn.execute("SELECT count(*) FROM events WHERE payload LIKE '%zz%'").fetchone()
        conn.execute("SELECT pg_sleep(0.05)")  # and a pause: the test machine has two cores
"""


@pytest.mark.timeout(360)  # a million rows through the MCP client, beside a scanner, on a loaded machine
async def test_a_million_rows_without_order_by_page_exactly_once_while_another_session_scans(big, files_root, tmp_path):
    with subprocess.Popen([PYTHON, "-c", SCANNER, big], stdout=subprocess.PIPE, text=True) as scanner:
        try:
            assert scanner.stdout.readline().strip() == "scanning"
            server = create_server(Settings(database_url=big, files_root=files_root, query_timeout_ms=20_000))
            async with Client(server) as client:
                page = await call(client, "query_database", query="SELECT id FROM events", max_rows=100_000)
                ids, costs = [row[0] for row in page["rows"]], []
                while page["truncated"]:
                    page = await call(client, "next_page", cursor=page["next_cursor"])
                    ids += [row[0] for row in page["rows"]]
                    costs.append(page["elapsed_ms"])
        finally:
            scanner.kill()
    assert len(ids) == 1_000_000 and len(set(ids)) == 1_000_000  # none skipped, none repeated
    assert len(costs) == 9
    second, last = sorted(costs[:3])[1], sorted(costs[-3:])[1]  # medians of three: one slow page is noise
    assert last <= 2 * second + 100, costs  # the last pages cost what the second does


async def test_an_open_result_holds_its_snapshot_only_until_it_is_read(big, files_root):
    def open_transactions() -> int:
        with psycopg.connect(big, autocommit=True) as conn:
            return conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND state = 'idle in transaction' AND backend_xmin IS NOT NULL"
            ).fetchone()[0]

    async with Client(create_server(Settings(database_url=big, files_root=files_root))) as client:
        page = await call(client, "query_database", query="SELECT x FROM tiny", max_rows=2)
        assert page["truncated"] and open_transactions() == 1  # the snapshot the next page comes from
        last = await call(client, "next_page", cursor=page["next_cursor"])
        assert last["rows"] == [[3]] and not last["truncated"]
        assert open_transactions() == 0  # read to the end: released at once
        assert "no longer open" in await error_of(client, "next_page", cursor=page["next_cursor"])


async def test_big_tables_are_estimated_and_small_ones_counted(big, files_root):
    async with Client(create_server(Settings(database_url=big, files_root=files_root))) as client:
        tables = {t["name"]: t for t in (await call(client, "list_tables"))["tables"]}
        described = await call(client, "describe_table", table="events")
    events, tiny = tables["public.events"], tables["public.tiny"]
    assert events["row_count_kind"] == "estimate" and abs(events["row_count"] - 1_000_000) < 50_000
    assert "reltuples" in events["row_count_note"]
    assert (tiny["row_count"], tiny["row_count_kind"]) == (3, "exact")
    assert described["row_count_kind"] == "estimate"


async def test_sixteen_concurrent_list_tables_all_answer_with_counts(big, files_root):
    async with Client(create_server(Settings(database_url=big, files_root=files_root))) as client:
        answers = await asyncio.gather(*(call(client, "list_tables") for _ in range(16)))
    for answer in answers:
        assert {t["name"]: t["row_count_kind"] for t in answer["tables"]} == {
            "public.events": "estimate",
            "public.tiny": "exact",
        }


async def test_list_tables_filters_by_schema_and_name(make_server):
    async with Client(make_server()) as client:
        archive = await call(client, "list_tables", schema="archive")
        books = await call(client, "list_tables", pattern="BOOK*")
        found = await call(client, "search_schema", pattern="title")
    assert [t["name"] for t in archive["tables"]] == ["archive.books"]
    assert [t["name"] for t in books["tables"]] == ["archive.books", "public.book_titles", "public.books"]
    assert {(c["table"], c["column"]) for c in found["columns"]} == {
        ("archive.books", "title"),
        ("public.book_titles", "title"),
        ("public.books", "title"),
    }


# --- Hard bounds: one hostile statement never hangs, starves or kills the server ---------------------------


def with_application_name(url: str, name: str) -> str:
    """`url` whose sessions show as `name` in pg_stat_activity, so a test can find exactly its own."""
    return f"{url}{'&' if '?' in url else '?'}application_name={name}"


def backends_of(library: Library, role: str, application: str) -> int:
    (count,) = admin_query(
        library,
        "SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND application_name = %s",
        (role, application),
    )[0]
    return count


SWALLOWS_CANCELS = (
    "DO $$BEGIN LOOP BEGIN PERFORM pg_sleep(3600); EXCEPTION WHEN query_canceled THEN NULL; END; END LOOP; END$$"
)


async def test_statements_that_swallow_cancels_end_at_the_deadline_and_leave_no_backend(library, files_root, tmp_path):
    role = urllib.parse.urlsplit(library.owner).username
    application = f"bounds-{secrets.token_hex(3)}"
    port = free_port()
    env = {
        "DATABASE_URL": with_application_name(library.owner, application),
        "MCP_FILES_ROOT": str(files_root),
        "MCP_POOL_SIZE": "5",
        "MCP_QUERY_TIMEOUT_MS": str(DEADLINE_MS),
        "MCP_LOG_LEVEL": "WARNING",
    }
    with running("server.py", "--transport", "http", env=env, logs=tmp_path / "logs", port=port) as process:
        async with Client(StreamableHttpTransport(f"http://127.0.0.1:{port}/mcp")) as client:
            # Five workers first, each started within the deadline of the call that needs it: on a loaded
            # machine that can take more than a second, so these calls may fail; then they are all up.
            await asyncio.gather(*(outcome(client, "query_database", query="SELECT pg_sleep(0.3)") for _ in range(5)))
            await seconds_until_idle(process.pid, time.monotonic())
            outcomes = await asyncio.gather(
                *(outcome(client, "query_database", patience=30, query=SWALLOWS_CANCELS) for _ in range(5))
            )
            await seconds_until_idle(process.pid, time.monotonic())  # the five killed workers' replacements are up
            await alive(client)
    for elapsed, result in outcomes:
        assert is_clear_error(result, f"ran past its {DEADLINE_MS} ms deadline"), answer_text(result)
        assert elapsed < WITHIN_S, elapsed
    for _ in range(50):  # the server process has exited: within 5 s none of its sessions is left
        if (left := backends_of(library, role, application)) == 0:
            break
        await asyncio.sleep(0.1)
    assert left == 0, f"{left} backends of {role} still running"


# Planned as one constant, which PostgreSQL computes without looking for a cancel: ~7 s here, alone.
UNINTERRUPTIBLE_NUMERIC = "SELECT (" + " + ".join(["mod(2::numeric ^ 435000, 3::numeric ^ 270000)"] * 25) + ") > 0"


async def test_numeric_work_postgresql_cannot_interrupt_does_not_hold_the_pool(make_server, library):
    # One worker: its killed session's backend computes on, a core to itself, and the replacement worker
    # starts on the other. (With a backend per core, the replacement's start-up waits for CPU instead.)
    application = f"bounds-{secrets.token_hex(3)}"
    deadline_ms = 2000
    url = with_application_name(library.owner, application)
    try:
        async with Client(make_server(url, pool_size=1, query_timeout_ms=deadline_ms)) as client:
            await alive(client)
            took, result = await outcome(client, "query_database", patience=30, query=UNINTERRUPTIBLE_NUMERIC)
            elapsed, normal = await outcome(client, "query_database", query="SELECT count(*) FROM books")
    finally:  # the backend finishes its sum by itself: wait, so later tests have the CPU
        for _ in range(300):
            if not admin_query(
                library,
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND state = 'active'",
                (application,),
            )[0][0]:
                break
            await asyncio.sleep(0.1)
    assert is_clear_error(result, f"ran past its {deadline_ms} ms deadline"), answer_text(result)
    assert took < deadline_ms / 1000 + 2, took
    assert not normal.is_error and normal.structured_content["rows"] == [[3]], answer_text(normal)
    assert elapsed < deadline_ms / 1000 + 2, elapsed


@pytest.mark.parametrize(
    ("sql", "cut"),
    [
        pytest.param("SELECT array_fill(0, ARRAY[30000000])", "…[30000000 items]", id="30 million items"),
        pytest.param(
            "SELECT repeat('x', 500000000)",
            "…[500000000 chars]",
            id="500 MB of text",
        ),
    ],
)
async def test_a_huge_value_is_cut_or_refused_in_bounded_memory(library, files_root, tmp_path, sql, cut):
    port = free_port()
    deadline_ms = 20_000  # long enough for PostgreSQL to build and send the value: the memory bound decides
    env = {
        "DATABASE_URL": library.owner,
        "MCP_FILES_ROOT": str(files_root),
        "MCP_QUERY_TIMEOUT_MS": str(deadline_ms),
        "MCP_LOG_LEVEL": "WARNING",
    }
    with running("server.py", "--transport", "http", env=env, logs=tmp_path / "logs", port=port) as process:
        async with wire_client(f"http://127.0.0.1:{port}/mcp") as client:
            with peak_rss(process.pid) as peak:
                elapsed, result = await outcome(client, "query_database", query=sql)
            await alive(client)
    if result.is_error:
        assert is_clear_error(result, "memory"), answer_text(result)
    else:
        assert answer_bytes(result) <= server.MAX_REPLY_BYTES
        assert json.dumps(result.structured_content["rows"][0][0], ensure_ascii=False).endswith(f'{cut}"]')
    assert elapsed < deadline_ms / 1000 + 2, elapsed
    assert peak[0] < MEMORY_CAP_KIB, f"{peak[0] // 1024} MiB"


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT txid_current()", "took a transaction id"),
        ("SELECT pg_current_xact_id()", "took a transaction id"),
        ("SET transaction_read_only = off", "read-write mode must be set before any query|no columns"),
        ("SET TRANSACTION READ WRITE", "read-write mode must be set before any query|no columns"),
    ],
)
async def test_a_transaction_id_or_a_writable_transaction_is_refused(make_server, unchanged, sql, expected):
    async with Client(make_server(pool_size=1)) as client:
        _, result = await outcome(client, "query_database", query=sql)
        assert "only read-only" in await error_of(client, "query_database", query="DELETE FROM books")
        await alive(client)
    assert is_clear_error(result, expected), answer_text(result)


@pytest.fixture
def role_that_may_not_log_in(library: Library) -> Iterator[str]:
    """The throwaway cluster trusts every login, so a refused one is a role without LOGIN (SQLSTATE 28000,
    the class of a wrong password's 28P01)."""
    role = f"safe_data_nologin_{secrets.token_hex(3)}"
    with psycopg.connect(library.admin, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} NOLOGIN PASSWORD 'unused'")
    yield role
    with psycopg.connect(library.admin, autocommit=True) as conn:
        conn.execute(f"DROP ROLE {role}")


async def test_a_connection_error_names_no_host_port_or_role(library, files_root):
    """The model sees that PostgreSQL cannot be reached, never where it is or who the server logs in as."""
    parts = urllib.parse.urlsplit(library.owner)
    port = free_port()  # nothing listens there: a warning at start, then an error per call
    url = f"postgresql://{parts.username}:not-the-password@{parts.hostname}:{port}/{library.database}"
    async with Client(
        create_server(Settings(database_url=url, files_root=files_root, query_timeout_ms=2000))
    ) as client:
        messages = [
            await error_of(client, "query_database", query="SELECT 1"),
            await error_of(client, "list_tables"),
            await error_of(client, "describe_table", table="books"),
        ]
    for message in messages:
        assert "cannot reach PostgreSQL" in message, message
        for secret in (parts.hostname, str(port), parts.username, "not-the-password", library.database):
            assert secret not in message, (secret, message)


def test_a_refused_login_stops_the_start_without_showing_the_password(library, files_root, role_that_may_not_log_in):
    parts = urllib.parse.urlsplit(library.owner)
    url = f"postgresql://{role_that_may_not_log_in}:not-the-password@{parts.hostname}:{parts.port}/{library.database}"
    with pytest.raises(SystemExit) as stopped:
        create_server(Settings(database_url=url, files_root=files_root))
    assert "not permitted to log in" in str(stopped.value)
    assert "not-the-password" not in str(stopped.value)


# --- MCP_HIDE: the role's privileges keep hidden tables and columns unread -----------------------

HIDDEN_SCHEMA = """
CREATE TABLE users (id int PRIMARY KEY, name text, email text UNIQUE, password_hash text);
CREATE TABLE mailings (id int, sent_to text REFERENCES users(email), subject text);
CREATE TABLE secrets (key text, value text);
CREATE SCHEMA crm;
CREATE TABLE crm.contacts (id int, name text, phone text);
CREATE TABLE contacts (id int, phone text);
CREATE TABLE notes (id int, email text, body text) PARTITION BY LIST (id);
CREATE TABLE notes_one PARTITION OF notes FOR VALUES IN (1);
CREATE VIEW user_logins AS SELECT name, password_hash FROM users;
CREATE VIEW user_names AS SELECT id, name FROM users;
INSERT INTO users VALUES (1, 'ann', 'ann@example.org', '$2b$kept-ann'), (2, 'bob', 'bob@example.org', '$2b$kept-bob');
INSERT INTO secrets VALUES ('stripe', 'sk-live-4242');
INSERT INTO crm.contacts VALUES (1, 'ann', '+1 555 0100');
INSERT INTO contacts VALUES (1, '+1 555 0199');
INSERT INTO notes VALUES (1, 'ann@example.org', 'hello');
ANALYZE;
GRANT USAGE ON SCHEMA public, crm TO {reader};
GRANT SELECT ON ALL TABLES IN SCHEMA public TO {reader};
GRANT SELECT ON secrets TO PUBLIC;
GRANT SELECT ON crm.contacts TO {group};
"""
PG_HIDE = "users.password_hash, *.email, secrets, crm.contacts.phone"


@dataclass
class HiddenLibrary:
    owner: str
    reader: str


@pytest.fixture
def hidden_library(admin_url: str) -> Iterator[HiddenLibrary]:
    """A database of its own whose read-only role can, at first, read everything MCP_HIDE will hide:
    directly, through PUBLIC, through a group role, a view and a partition."""
    suffix = secrets.token_hex(3)
    database, owner, reader, group = (f"safe_hide_{kind}_{suffix}" for kind in ("db", "owner", "reader", "group"))
    passwords = {role: secrets.token_hex(8) for role in (owner, reader)}
    urls = {role: url_for(admin_url, user=role, password=passwords[role], database=database) for role in passwords}
    try:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            for role in (owner, reader):
                conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{passwords[role]}'")
            conn.execute(f"CREATE ROLE {group} NOLOGIN")
            conn.execute(f"GRANT {group} TO {reader}")
            conn.execute(f"CREATE DATABASE {database} OWNER {owner}")
        with psycopg.connect(urls[owner], autocommit=True) as conn:
            conn.execute(HIDDEN_SCHEMA.format(reader=reader, group=group))
        yield HiddenLibrary(owner=urls[owner], reader=urls[reader])
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
            for role in (owner, reader, group):
                conn.execute(f"DROP ROLE IF EXISTS {role}")


def refusal_to_start(url: str, files_root: Path) -> str:
    with pytest.raises(SystemExit) as stopped:
        create_server(Settings(database_url=url, files_root=files_root, hide=PG_HIDE, pool_size=1))
    return str(stopped.value)


def make_readers_blind(hidden_library: HiddenLibrary, files_root: Path) -> str:
    """Run the statements of the refusal as the owner, the way an operator would; the refusal."""
    message = refusal_to_start(hidden_library.reader, files_root)
    statements = [line.strip() for line in message.splitlines()[1:]]
    with psycopg.connect(hidden_library.owner, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)
    return message


def test_a_role_that_can_read_hidden_data_is_refused_with_the_fix(hidden_library, files_root):
    message = refusal_to_start(hidden_library.reader, files_root)
    first, *statements = message.splitlines()
    for exposed in (
        '"public"."users"."password_hash"', '"public"."users"."email"', '"public"."secrets"',
        '"crm"."contacts"."phone"', '"public"."user_logins"', '"public"."notes"."email"',
        '"public"."notes_one"."email"', '"public"."mailings"."sent_to"',
    ):  # fmt: skip
        assert exposed in first, exposed
    assert '"public"."contacts"' not in message  # crm.contacts.phone names one schema's table
    assert 'REVOKE SELECT ON "public"."secrets" FROM PUBLIC;' in [s.strip() for s in statements]
    assert all(s.strip().startswith(("REVOKE ", "GRANT ")) for s in statements), statements
    assert "$2b$" not in message and "example.org" not in message


async def test_the_printed_statements_make_the_start_succeed(hidden_library, files_root):
    make_readers_blind(hidden_library, files_root)
    settings = Settings(database_url=hidden_library.reader, files_root=files_root, hide=PG_HIDE, pool_size=1)
    async with Client(create_server(settings)) as client:
        visible = await call(client, "query_database", query="SELECT id, name FROM users ORDER BY id")
        through_view = await call(client, "query_database", query="SELECT name FROM user_names ORDER BY id")
        stats = await call(client, "query_database", query="SELECT attname FROM pg_stats WHERE tablename = 'users'")
        refused = [
            await error_of(client, "query_database", query=sql)
            for sql in (
                "SELECT password_hash FROM users", "SELECT * FROM users", "SELECT count(*) FROM secrets",
                "SELECT * FROM user_logins", "SELECT email FROM notes_one", "SELECT phone FROM crm.contacts",
                "SELECT name FROM users WHERE email LIKE 'a%'",
                "SELECT 1 FROM (SELECT '$2b$kept-ann' AS password_hash) AS s NATURAL JOIN users",
            )
        ]  # fmt: skip
        column = await error_of(client, "query_database", query="SELECT name, password_hash FROM users")
        table = await error_of(client, "query_database", query="SELECT * FROM secrets")
    assert visible["rows"] == [[1, "ann"], [2, "bob"]] and through_view["rows"] == [["ann"], ["bob"]]
    assert {name for (name,) in stats["rows"]} <= {"id", "name"}  # pg_stats shows only readable columns
    assert column.endswith(
        'the columns email, password_hash of "public"."users" are hidden on this server (MCP_HIDE): no statement'
        " may use their values, whether selected, in WHERE, ORDER BY or a join, through a view or *; the visible"
        ' columns of "public"."users" are: id, name'
    )
    assert table == 'the table "public"."secrets" is hidden on this server (MCP_HIDE): no statement may read it'
    for message in refused:
        assert "hidden on this server (MCP_HIDE)" in message, message
        assert "$2b$" not in message and "example.org" not in message and "4242" not in message


async def test_postgres_listings_leave_hidden_things_out_and_mark_hidden_columns(hidden_library, files_root):
    make_readers_blind(hidden_library, files_root)
    handler, asked = answering("SELECT name FROM users ORDER BY id")
    settings = Settings(database_url=hidden_library.reader, files_root=files_root, hide=PG_HIDE, pool_size=1)
    async with Client(create_server(settings), mode="legacy", sampling_handler=handler) as client:
        tables = await call(client, "list_tables")
        found = await call(client, "search_schema", pattern="*")
        users = await call(client, "describe_table", table="users")
        contacts = await call(client, "describe_table", table="crm.contacts")
        public_contacts = await call(client, "describe_table", table="public.contacts")
        missing = await error_of(client, "describe_table", table="secrets")
        await call(client, "ask_database", question="who are the users?")
    names = [t["name"] for t in tables["tables"]]
    assert names == [
        "crm.contacts", "public.contacts", "public.mailings", "public.notes", "public.user_names", "public.users"
    ]  # fmt: skip
    assert not {"public.secrets", "public.user_logins"} & set(found["tables"])
    assert not {c["column"] for c in found["columns"] if c["table"] != "public.contacts"} & {"email", "phone"}
    assert {c["name"]: c["hidden"] for c in users["columns"]} == {
        "id": False, "name": False, "email": True, "password_hash": True
    }  # fmt: skip
    assert [c["name"] for c in contacts["columns"] if c["hidden"]] == ["phone"]
    assert not any(c["hidden"] for c in public_contacts["columns"])
    assert "no table or view named 'secrets'" in missing
    schema = {t["name"]: t["columns"] for t in json.loads(asked[0][0][0].content.text)["schema"]}
    assert schema["public.users"] == ["id integer", "name text"]
    assert schema["crm.contacts"] == ["id integer", "name text"]
    assert "public.secrets" not in schema and "public.user_logins" not in schema


def test_an_owner_role_is_refused_whatever_it_was_granted(hidden_library, files_root):
    message = refusal_to_start(hidden_library.owner, files_root)
    assert '"public"."secrets"' in message and "it owns" in message and "connect as a role that only reads" in message


# --- Several databases: two SQLite files and PostgreSQL in one server ------------------------------

PG_TABLES = [
    "archive.books",
    "public.authors",
    "public.book_titles",
    "public.books",
    "public.numbers",
    "public.oddities",
]


@pytest.fixture
def mixed(library: Library, tmp_path: Path) -> dict[str, str]:
    """MCP_DATABASES of the SQLite library (the default), this PostgreSQL database and the SQLite shop."""
    library_db, shop_db = build_database(tmp_path / "library.db"), build_shop(tmp_path / "shop.db")
    return {"books": str(library_db), "pg": library.owner, "shop": str(shop_db)}


async def test_two_sqlite_databases_and_postgresql_serve_at_once(mixed, files_root):
    async with Client(create_server(Settings(databases=mixed, files_root=files_root))) as client:
        pg = await call(
            client, "query_database", query="SELECT title FROM books WHERE id = $1", params=[3], database="pg"
        )
        books = await call(client, "query_database", query="SELECT title FROM books WHERE id = ?", params=[3])
        shop = await call(client, "query_database", query="SELECT name FROM customers ORDER BY id", database="shop")
        listed = await call(client, "list_databases")
        described = await call(client, "describe_table", table="books", database="pg")
        searched = await call(client, "search_schema", pattern="title", database="pg")
    assert pg["rows"] == books["rows"] == [["Solaris"]] and shop["rows"] == [["Ada"], ["Kofi"]]
    assert [(d["name"], d["engine"], d["table_count"], d["default"]) for d in listed["databases"]] == [
        ("books", "SQLite", 5, True),
        ("pg", "PostgreSQL", 6, False),
        ("shop", "SQLite", 2, False),
    ]
    assert described["name"] == "public.books" and described["row_count"] == 3
    assert {c["table"] for c in searched["columns"]} == {"archive.books", "public.book_titles", "public.books"}


async def test_list_tables_spans_sqlite_and_postgresql(mixed, files_root):
    async with Client(create_server(Settings(databases=mixed, files_root=files_root))) as client:
        every = await call(client, "list_tables")
        archive = await call(client, "list_tables", schema="archive")  # only PostgreSQL has schemas
        pg = await call(client, "list_tables", database="pg", pattern="book*")
    assert [(t["database"], t["name"]) for t in every["tables"]] == [
        *(("books", name) for name in ["authors", "book_titles", "books", "numbers", "oddities"]),
        *(("pg", name) for name in PG_TABLES),
        ("shop", "customers"),
        ("shop", "numbers"),
    ]
    assert every["total"] == 13 and every["unavailable"] is None
    assert [(t["database"], t["name"]) for t in archive["tables"]] == [("pg", "archive.books")] and archive[
        "total"
    ] == 1
    names = [(t["database"], t["name"]) for t in pg["tables"]]
    assert names == [("pg", "archive.books"), ("pg", "public.book_titles"), ("pg", "public.books")]


async def test_next_page_resources_and_completion_reach_postgresql_by_name(mixed, files_root):
    ref = {"type": "ref/resource", "uri": "schema://{database}/tables/{table}"}
    async with Client(create_server(Settings(databases=mixed, files_root=files_root))) as client:
        page = await call(
            client, "query_database", query="SELECT n FROM numbers ORDER BY n", max_rows=900, database="pg"
        )
        rows = page["rows"]
        while page["truncated"]:
            page = await call(client, "next_page", cursor=page["next_cursor"])
            rows += page["rows"]
        resource = json.loads((await client.read_resource("schema://pg/tables/public.books"))[0].text)
        tool = await call(client, "describe_table", table="public.books", database="pg")
        listing = json.loads((await client.read_resource("schema://pg/tables"))[0].text)
        completed = await client.complete(
            ref=ref, argument={"name": "table", "value": "public.b"}, context_arguments={"database": "pg"}
        )
        view = (await client.read_resource("config://app/settings"))[0].text
    assert [row[0] for row in rows] == list(range(1, 2501))  # PostgreSQL's numbers, not the SQLite library's
    assert resource == tool and [t["name"] for t in listing["tables"]] == PG_TABLES
    assert completed.values == ["public.book_titles", "public.books"]
    password = urllib.parse.urlsplit(mixed["pg"]).password
    engines = [(d["name"], d["engine"]) for d in json.loads(view)["databases"]]
    assert engines == [("books", "SQLite"), ("pg", "PostgreSQL"), ("shop", "SQLite")] and password not in view


async def test_a_bad_postgresql_database_stops_only_itself(library, mixed, files_root, role_that_may_not_log_in):
    parts = urllib.parse.urlsplit(library.owner)
    refused = (
        f"postgresql://{role_that_may_not_log_in}:not-the-password@{parts.hostname}:{parts.port}/{library.database}"
    )
    down = f"postgresql://{parts.username}:not-the-password@{parts.hostname}:{free_port()}/{library.database}"
    databases = {"books": mixed["books"], "refused": refused, "down": down, "root": library.admin, "pg": mixed["pg"]}
    async with Client(
        create_server(Settings(databases=databases, files_root=files_root, query_timeout_ms=2000))
    ) as client:
        books = await call(client, "query_database", query="SELECT count(*) FROM books")
        pg = await call(client, "query_database", query="SELECT count(*) FROM books", database="pg")
        errors = {name: await error_of(client, "list_tables", database=name) for name in ("refused", "down", "root")}
        listed = await call(client, "list_databases")
        every = await call(client, "list_tables")
        view = (await client.read_resource("config://app/settings"))[0].text
    assert books["rows"] == pg["rows"] == [[3]]
    assert "database 'refused' is unavailable: PostgreSQL refused the server's login" in errors["refused"]
    assert "cannot reach PostgreSQL" in errors["down"]  # it may come up later: each call tries again
    assert "database 'root' is unavailable: its PostgreSQL role may read server files" in errors["root"]
    for message in [*errors.values(), *(d["unavailable"] or "" for d in listed["databases"])]:
        for secret in (parts.hostname, parts.username, role_that_may_not_log_in, "not-the-password"):
            assert secret not in message, (secret, message)
    assert [(d["name"], d["table_count"], d["unavailable"] is None) for d in listed["databases"]] == [
        ("books", 5, True), ("refused", None, False), ("down", None, False), ("root", None, False), ("pg", 6, True),
    ]  # fmt: skip
    assert sorted(every["unavailable"]) == ["down", "refused", "root"] and every["total"] == 11
    assert "not-the-password" not in view and urllib.parse.urlsplit(mixed["pg"]).password not in view


async def test_a_grant_after_the_start_is_refused_by_the_next_session(hidden_library, files_root):
    make_readers_blind(hidden_library, files_root)
    settings = Settings(database_url=hidden_library.reader, files_root=files_root, hide=PG_HIDE, pool_size=1)
    async with Client(create_server(settings)) as client:
        held = await call(client, "query_database", query="SELECT id FROM users ORDER BY id", max_rows=1)
        assert held["next_cursor"]  # that page keeps the worker's session: the next call connects afresh
        with psycopg.connect(hidden_library.owner, autocommit=True) as conn:
            conn.execute(
                f"GRANT SELECT ON secrets TO {psycopg.conninfo.conninfo_to_dict(hidden_library.reader)['user']}"
            )
        message = await error_of(client, "query_database", query="SELECT 1")
    assert 'can read: "public"."secrets"' in message and "REVOKE SELECT ON" in message
