"""Benchmark this server against the archived official SQLite MCP server, and against the raw floor.

    uv run python benchmarks/bench.py            # full run: SQLite and PostgreSQL, about 10 minutes on 2 cores
    uv run python benchmarks/bench.py --quick    # fewer repetitions, for a smoke test
    uv run python benchmarks/bench.py --only pg  # only the PostgreSQL section (its deep pages included)

It builds its own database in a temporary folder, then measures in one run, interleaved call by
call, the same work for four things:

  ours      server.py over stdio, started with `uv run --frozen server.py` (MCP_DB_PATH, MCP_MAX_ROWS);
            every statement runs in one of its worker processes (`python server.py --worker database`)
  official  `uvx --from mcp-server-sqlite==2025.4.25 --with "mcp<2" mcp-server-sqlite --db-path DB`,
            its `read_query` tool; after one online warm-up it runs with `uvx --offline` so that
            uv's index check is not counted as the server's start-up
  bare      a minimal FastMCP 4.2.3 server doing what the official one does (fetchall, str of dicts):
            the framework's own floor, to tell its costs from this server's
  floor     sqlite3 fetch + json.dumps of the same rows, in this process, no protocol at all

All servers are driven by the same client: the official MCP Python SDK's `mcp.Client` over stdio,
initialize handshake (what desktop clients do). Shared machines are noisy: read the medians and the
ratios, which come from one interleaved run; a bare time from another run means little.
Children start with bytecode caching on (PYTHONDONTWRITEBYTECODE unset) and after a warm-up start,
as on a user's machine where `__pycache__` is already written.

Memory is the peak resident memory (VmHWM) of the server process and of every worker process below
it, added up. The processes peak at different moments, so the sum of their peaks is an upper bound
of what they held at any one time. A worker that was replaced before the reading is not counted.
The official server is one process. That one call goes through a minimal JSON-RPC client (see
plain_call): mcp.Client's stdio reader takes minutes over the official server's 120 MB answer.

Two rows split ours' 10,000-row time: the server's own `elapsed_ms` (its hop to the worker and back,
the database, the encoding in the worker), and the client's check of `structuredContent` against the
tool's output schema, which mcp.Client runs on every call (the official server has no output schema).

Deep pages (`deep`): `SELECT * FROM big` (1,000,000 rows, no ORDER BY) read to its end with
max_rows 10,000 (query_database, then next_page 99 times), over stdio, on two copies of the file:
one in WAL mode (made with sqlite3's backup API and `PRAGMA journal_mode=WAL`), where the worker
holds the result open and every page reads on from where the last one stopped, and the default
rollback-journal file, where each next page runs the statement again and skips the rows already
sent, in the worker. The two are read interleaved, page by page, in the first pass (the rollback
journal's pass takes minutes, so it has only that one; WAL has 3 in the full run). These servers run
with MCP_QUERY_TIMEOUT_MS=60000, so that a far rollback-journal page is timed, not refused at the
default 5 s. Reported: the median time of pages 2-4 and of the last three pages (rows
970,001-1,000,000), and their ratio. The floor reads the same pages from one open sqlite3 cursor
(fetchmany + json.dumps), in this process.

The PostgreSQL section (`pg`; in the full run whenever PostgreSQL's initdb and pg_ctl are installed,
skipped with the reason otherwise) starts a throwaway cluster on a free loopback port (as the
`postgres` user when run as root), COPYs the same 100,000 `items` rows and the 1,000,000 `big` rows
into it, and runs server.py with DATABASE_URL as the README's read-only role `bench_reader`. Its
floor is psycopg in this process: one open connection, `cursor.execute(sql)`, `fetchall`,
`json.dumps` (for deep pages: a server-side cursor, `fetchmany`). The cluster and every child are
stopped on the way out, also on error.

The run ends with the targets, each marked met or not with its figures; the previous run's ratios
(PREVIOUS: against bare FastMCP for start-up, the official server or psycopg for 10,000 rows) are the
baseline, since times alone change with the machine's other load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import pwd
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import mcp_types
from mcp import Client, StdioServerParameters

ROOT = Path(__file__).resolve().parent.parent
OFFICIAL = ["--from", "mcp-server-sqlite==2025.4.25", "--with", "mcp<2", "mcp-server-sqlite"]
TABLE_ROWS = 100_000  # the table every per-call figure reads (the database)
BIG_ROWS = 1_000_000  # the table the memory figure selects in full
LARGE = 10_000  # rows in the "large result"
ONE_ROW = "SELECT * FROM items WHERE id = 4242"
LARGE_QUERY = f"SELECT * FROM items LIMIT {LARGE}"
BIG_QUERY = "SELECT * FROM big"
DEEP_ROWS = 10_000  # rows per page in the deep-page section: `big` in 100 pages
# The previous run's ratios (FastMCP 4.2.3, one process, 2026-11-25), the baseline of the targets. Ratios
# within one interleaved run, not times: the same machine ran the official server 2x slower a week later.
PREVIOUS = {
    "start-up / bare": 929.72 / 762.31,  # ours against a bare FastMCP server: the framework's own start
    "large / official": 113.06 / 44.10,  # the 10,000-row SELECT against the official server's
    "pg large / floor": 138.95 / 15.38,  # the same on PostgreSQL against psycopg's fetch + json.dumps
}
NOISE = 1.05  # start-up medians of 9 starts differ by more than this between runs on a shared machine
MEMORY_TARGET_MIB = 1024  # server and workers together stay under 1 GiB
# The deep-page servers' deadline: a rollback-journal page far in runs the statement again and skips
# up to 990,000 rows, seconds on a busy machine; the default 5 s would refuse it instead of timing it.
DEEP_ENV = {"MCP_QUERY_TIMEOUT_MS": "60000"}


def child_env(*extra: dict[str, str]) -> dict[str, str]:
    """This environment (proxies, certificates, uv settings) with bytecode caching on, as users have it.

    PYTHONDONTWRITEBYTECODE is dropped so the warm-up start writes `__pycache__`. UV_COMPILE_BYTECODE
    is not set: with it `uv run` recompiles the whole environment on every start (~0.15 s here).
    """
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "VIRTUAL_ENV")}
    for more in extra:
        env.update(more)
    return env


# --- Data ------------------------------------------------------------------------------------------


def item_rows(count: int) -> Iterator[tuple[int, str, str, float, str]]:
    """The rows of `items` (and `big`): the same values for SQLite and PostgreSQL."""
    for i in range(1, count + 1):
        yield (
            i,
            f"customer {i}",
            f"user{i}@example.com",
            round((i * 7919 % 100_000) / 100, 2),
            f"2025-{i % 12 + 1:02d}-{i % 28 + 1:02d}",
        )


def build_database(path: Path) -> None:
    """items: 100,000 rows of five typical columns; big: the same shape, 1,000,000 rows."""
    conn = sqlite3.connect(path)
    shape = "(id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL, amount REAL NOT NULL, created TEXT)"
    conn.executescript(f"CREATE TABLE items {shape}; CREATE TABLE big {shape};")
    for table, count in (("items", TABLE_ROWS), ("big", BIG_ROWS)):
        conn.executemany(f"INSERT INTO {table} VALUES (?, ?, ?, ?, ?)", item_rows(count))
    conn.commit()
    conn.close()


def floor_rows(db: Path, sql: str) -> tuple[list[list[Any]], str]:
    """The raw floor: one sqlite3 fetch and one compact json.dumps of the rows."""
    conn = sqlite3.connect(db)
    try:
        cursor = conn.execute(sql)
        columns = [d[0] for d in cursor.description]
        rows = [list(r) for r in cursor.fetchall()]
    finally:
        conn.close()
    return rows, json.dumps({"columns": columns, "rows": rows}, separators=(",", ":"))


def compact_rows_bytes(db: Path, sql: str) -> int:
    rows, _ = floor_rows(db, sql)
    return len(json.dumps(rows, separators=(",", ":"), ensure_ascii=False).encode())


# --- Servers -----------------------------------------------------------------------------------------


class Target:
    """How to start one server over stdio and call its query tool."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], tool: str, arg: str):
        self.name, self.command, self.env, self.tool, self.arg = name, command, env, tool, arg

    def params(self, extra_env: dict[str, str] | None = None, relay: Path | None = None) -> StdioServerParameters:
        command = self.command
        if relay is not None:  # count the bytes the server writes, line by line, exactly as sent
            command = [sys.executable, str(Path(__file__).resolve()), "--relay", str(relay), "--", *command]
        env = child_env(self.env, extra_env or {})
        return StdioServerParameters(command=command[0], args=command[1:], env=env, cwd=str(ROOT))

    def connect(self, **kwargs: Any) -> Client:
        return Client(self.params(**kwargs), mode="legacy", read_timeout_seconds=120)

    async def query(self, client: Client, sql: str) -> mcp_types.CallToolResult:
        result = await client.call_tool(self.tool, {self.arg: sql})
        if result.is_error:
            raise RuntimeError(f"{self.name}: {result.content}")
        return result


BARE_FASTMCP = textwrap.dedent(
    """
    # The framework floor: FastMCP 4.2.3 doing what the official server does (fetchall, str of dicts),
    # no docstring to parse, no output schema, none of server.py's guards.
    import sqlite3, sys
    from contextlib import closing
    from fastmcp import FastMCP

    mcp = FastMCP("bare")

    @mcp.tool(output_schema=None)
    def read_query(query: str) -> str:
        with closing(sqlite3.connect(sys.argv[1])) as conn:
            cursor = conn.execute(query)
            names = [d[0] for d in cursor.description]
            return str([dict(zip(names, row)) for row in cursor.fetchall()])

    mcp.run("stdio", show_banner=False)
    """
)


def bare_fastmcp(db: Path, workdir: Path) -> Target:
    script = workdir / "bare_fastmcp.py"
    script.write_text(BARE_FASTMCP)
    command = ["uv", "run", "--frozen", "--project", str(ROOT), "python", str(script), str(db)]
    return Target("bare", command, {"FASTMCP_LOG_LEVEL": "WARNING"}, "read_query", "query")


def targets(db: Path, files: Path, offline: bool, extra: dict[str, str] | None = None) -> tuple[Target, Target]:
    ours = Target(
        "ours",
        ["uv", "run", "--frozen", "--project", str(ROOT), "python", str(ROOT / "server.py")],
        {
            "MCP_DB_PATH": str(db),
            "MCP_FILES_ROOT": str(files),
            "MCP_MAX_ROWS": str(LARGE),
            "MCP_LOG_LEVEL": "WARNING",
            **(extra or {}),
        },
        "query_database",
        "query",
    )
    uvx = ["uvx", "--offline"] if offline else ["uvx"]
    official = Target("official", [*uvx, *OFFICIAL, "--db-path", str(db)], {}, "read_query", "query")
    return ours, official


def process_children() -> dict[int, list[int]]:
    """Every process's children, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    return children


def descendants(pid: int) -> list[int]:
    children = process_children()
    found, pending = [], [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def memory_mib(pids: list[int]) -> tuple[float, float, int]:
    """(sum of peaks, sum of current, count) of the resident memory of the python processes among `pids`,
    in MiB: VmHWM and VmRSS of the server and each of its workers. A sum of peaks is an upper bound: the
    processes need not have peaked at the same moment."""
    peak = now = 0.0
    count = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if not comm.startswith("python"):
            continue
        fields = {line.split(":")[0]: line.split()[1] for line in status.splitlines() if line.startswith("Vm")}
        peak += int(fields.get("VmHWM", 0)) / 1024
        now += int(fields.get("VmRSS", 0)) / 1024
        count += 1
    return peak, now, count


@contextlib.asynccontextmanager
async def server_session(target: Target, **kwargs: Any) -> Any:
    """An open client session, and a function that lists the server's processes: the ones this
    session started (uv or uvx, the server) and everything below them, workers started later included."""
    before = set(process_children().get(os.getpid(), []))
    async with target.connect(**kwargs) as client:
        roots = [pid for pid in process_children().get(os.getpid(), []) if pid not in before]

        def processes() -> list[int]:
            return [pid for root in roots for pid in (root, *descendants(root))]

        yield client, processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- Measurements -----------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values)


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[18] if len(values) > 1 else values[0]


async def measure_startup(pair: tuple[Target, ...], rounds: int) -> dict[str, list[float]]:
    """Spawn to the initialize response, interleaved; the session is closed untimed."""
    times: dict[str, list[float]] = {t.name: [] for t in pair}
    for _ in range(rounds):
        for target in pair:
            async with AsyncExitStack() as stack:
                started = time.perf_counter()
                await stack.enter_async_context(target.connect())
                times[target.name].append(time.perf_counter() - started)
    return times


async def measure_calls(pair: tuple[Target, ...], sql: str, calls: int, warmup: int) -> dict[str, list[float]]:
    """Per-call latency of the same query on one open session each, alternating call by call."""
    times: dict[str, list[float]] = {t.name: [] for t in pair}
    async with AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(t.connect()) for t in pair]
        for i in range(warmup + calls):
            for target, client in zip(pair, clients, strict=True):
                started = time.perf_counter()
                await target.query(client, sql)
                if i >= warmup:
                    times[target.name].append(time.perf_counter() - started)
    return times


async def measure_parts(target: Target, sql: str, calls: int) -> tuple[list[float], list[float]]:
    """Two parts of ours' time for `sql`: the server's own elapsed_ms (the hop to its worker and back,
    the database, the encoding), and the client's check of structuredContent against the tool's output
    schema, which mcp.Client runs on every call (its validator compiled once, as the client does)."""
    from jsonschema import exceptions as jsonschema_exceptions
    from jsonschema.validators import validator_for
    from referencing import Registry

    elapsed, checks = [], []
    async with target.connect() as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        schema = tools[target.tool].output_schema
        validator = validator_for(schema)(schema, registry=Registry())
        for _ in range(calls):
            structured = (await target.query(client, sql)).structured_content
            elapsed.append(structured["elapsed_ms"] / 1000)
            started = time.perf_counter()
            jsonschema_exceptions.best_match(validator.iter_errors(structured))
            checks.append(time.perf_counter() - started)
    return elapsed, checks


async def measure_wire(target: Target, sql: str, workdir: Path) -> int:
    """Bytes of the one JSON-RPC line that carried the result, counted by a relay."""
    counts = workdir / f"wire-{target.name}.json"
    async with target.connect(relay=counts) as client:
        await target.query(client, sql)
    await asyncio.sleep(0.2)  # the relay writes its counts as the server exits
    return max(json.loads(counts.read_text()))


def plain_call(target: Target, sql: str, extra_env: dict[str, str]) -> tuple[dict[str, Any], tuple, tuple]:
    """One tool call over stdio with a minimal JSON-RPC client (initialize, the call, one bytes readline):
    the answer, and memory_mib of the server's processes after start-up and after the answer.

    The memory figure uses this rather than `mcp.Client`: mcp 2.3.0's stdio reader joins and re-splits
    its whole buffer on every 64 KiB chunk, which is quadratic in the length of a line; the official
    server's 120 MB answer to SELECT * FROM big took it minutes, against seconds for the server."""
    params = target.params(extra_env)
    proc = subprocess.Popen(
        [params.command, *params.args], cwd=params.cwd, env=params.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert proc.stdin is not None and proc.stdout is not None

    def send(message: dict[str, Any]) -> None:
        proc.stdin.write(json.dumps({"jsonrpc": "2.0", **message}).encode() + b"\n")
        proc.stdin.flush()

    def answer(request_id: int) -> dict[str, Any]:
        while line := proc.stdout.readline():
            message = json.loads(line)
            if message.get("id") == request_id:
                return message
        raise RuntimeError(f"{target.name} closed its stdout before answering")

    try:
        hello = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}
        send({"id": 1, "method": "initialize", "params": hello})
        answer(1)
        send({"method": "notifications/initialized"})
        time.sleep(0.5)  # a warm pool's first worker is up by now
        processes = lambda: [proc.pid, *descendants(proc.pid)]  # noqa: E731
        before = memory_mib(processes())
        send({"id": 2, "method": "tools/call", "params": {"name": target.tool, "arguments": {target.arg: sql}}})
        reply = answer(2)
        after = memory_mib(processes())
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if "error" in reply or reply["result"].get("isError"):
        raise RuntimeError(f"{target.name}: {str(reply)[:500]}")
    return reply["result"], before, after


async def measure_memory(target: Target, sql: str, extra_env: dict[str, str]) -> tuple[float, float, int, int]:
    """(peak RSS after the query, RSS after start-up, rows returned, processes counted): the server
    process and all its workers, each figure a sum over them (see memory_mib)."""
    result, before, after = await asyncio.to_thread(plain_call, target, sql, extra_env)
    if result.get("structuredContent") is not None:
        rows = result["structuredContent"]["row_count"]
    else:  # the official server's text is str(list_of_dicts): count the dicts
        rows = result["content"][0]["text"].count("{'id': ")
    return after[0], before[1], rows, after[2]


class PageReader:
    """One result read to its end over one session: query_database, then next_page on each next_cursor."""

    def __init__(self, name: str, client: Client, sql: str, page_rows: int):
        self.name, self.client, self.sql, self.page_rows = name, client, sql, page_rows
        self.times: list[float] = []  # each page's time, as the client saw it
        self.cursor: str | None = None
        self.rows = self.id_sum = 0
        self.done = False

    async def step(self) -> None:
        started = time.perf_counter()
        if not self.times:
            result = await self.client.call_tool("query_database", {"query": self.sql, "max_rows": self.page_rows})
        else:
            result = await self.client.call_tool("next_page", {"cursor": self.cursor})
        self.times.append(time.perf_counter() - started)
        if result.is_error or result.structured_content is None:
            raise RuntimeError(f"{self.name}, page {len(self.times)}: {result.content}")
        page = result.structured_content
        if page["truncated"] and page["row_count"] != self.page_rows:
            raise RuntimeError(f"{self.name}, page {len(self.times)}: {page['row_count']} rows, not {self.page_rows}")
        self.rows += page["row_count"]
        self.id_sum += sum(row[0] for row in page["rows"])
        self.cursor, self.done = page["next_cursor"], not page["truncated"]

    def check(self, total: int) -> None:
        """Every row exactly once (the count, and the sum of the ids 1..total), in full pages."""
        if self.rows != total or self.id_sum != total * (total + 1) // 2:
            raise RuntimeError(f"{self.name} read {self.rows:,} rows (id sum {self.id_sum}), expected {total:,}")
        if len(self.times) != -(-total // self.page_rows):
            raise RuntimeError(f"{self.name} read {total:,} rows in {len(self.times)} pages of {self.page_rows:,}")


Deep = dict[str, list[float]]  # "second": pages 2-4, "last": the last three, "page 1", "whole": of every pass


def deep_record(found: Deep, times: list[float]) -> None:
    found.setdefault("page 1", []).append(times[0])
    found.setdefault("second", []).extend(times[1:4])
    found.setdefault("last", []).extend(times[-3:])
    found.setdefault("whole", []).append(sum(times))


async def measure_deep(named: list[tuple[str, Target, int]], passes: int) -> tuple[dict[str, Deep], dict[str, float]]:
    """Deep pages of BIG_QUERY on each (name, target, its passes), read side by side page by page,
    `passes` times over (a target with fewer passes sits out the later ones); and the peak memory of
    each server with its workers (MiB, sum of peaks) after the last pass."""
    found: dict[str, Deep] = {name: {} for name, _, _ in named}
    async with AsyncExitStack() as stack:
        sessions = [(name, n, *await stack.enter_async_context(server_session(t))) for name, t, n in named]
        for name, _, client, _ in sessions:  # the client fetches and compiles each tool's output schema once
            warm = PageReader(name, client, f"{BIG_QUERY} LIMIT 3", 1)
            while not warm.done:
                await warm.step()
        for round_ in range(passes):
            readers = [PageReader(name, client, BIG_QUERY, DEEP_ROWS) for name, n, client, _ in sessions if round_ < n]
            while not all(r.done for r in readers):
                for reader in readers:
                    if not reader.done:
                        await reader.step()
            for reader in readers:
                reader.check(BIG_ROWS)
                deep_record(found[reader.name], reader.times)
        memory = {name: memory_mib(processes())[0] for name, _, _, processes in sessions}
    return found, memory


def page_json(columns: list[str], rows: list[Any]) -> str:
    return json.dumps({"columns": columns, "rows": [list(r) for r in rows]}, separators=(",", ":"))


def measure_deep_floor(db: Path, passes: int) -> Deep:
    """The floor of deep pages: one open sqlite3 cursor, fetchmany(DEEP_ROWS) + json.dumps per page."""
    found: Deep = {}
    for _ in range(passes):
        conn = sqlite3.connect(db)
        try:
            times = []
            started = time.perf_counter()
            cursor = conn.execute(BIG_QUERY)
            columns = [d[0] for d in cursor.description]
            while rows := cursor.fetchmany(DEEP_ROWS):
                page_json(columns, rows)
                times.append(time.perf_counter() - started)
                started = time.perf_counter()
        finally:
            conn.close()
        deep_record(found, times)
    return found


def wal_copy(db: Path, target: Path) -> None:
    """A copy of the database, `big` included, in WAL mode: sqlite3's backup API, then the journal mode."""
    with contextlib.closing(sqlite3.connect(db)) as source, contextlib.closing(sqlite3.connect(target)) as copy:
        source.backup(copy)
        mode = copy.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode != "wal":
        raise RuntimeError(f"{target.name} is in journal mode {mode!r}, not WAL")


def measure_floor(db: Path, sql: str, calls: int) -> list[float]:
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        floor_rows(db, sql)
        times.append(time.perf_counter() - started)
    return times


async def measure_inprocess_ours(db: Path, files: Path, sql: str, calls: int, warmup: int) -> list[float]:
    sys.path.insert(0, str(ROOT))
    os.environ.update({"MCP_DB_PATH": str(db), "MCP_FILES_ROOT": str(files), "MCP_LOG_LEVEL": "WARNING"})
    import fastmcp

    import server

    mcp = server.create_server(server.Settings(db_path=db, files_root=files, max_rows=LARGE))
    times = []
    async with fastmcp.Client(mcp) as client:
        for i in range(warmup + calls):
            started = time.perf_counter()
            await client.call_tool("query_database", {"query": sql})
            if i >= warmup:
                times.append(time.perf_counter() - started)
    return times


OFFICIAL_INPROCESS = textwrap.dedent(
    """
    # The official server in-process: its stdio streams swapped for memory streams, mcp<2 client.
    import json, sys, time
    from contextlib import asynccontextmanager
    import anyio
    from mcp.client.session import ClientSession
    from mcp.shared.memory import create_client_server_memory_streams
    import mcp_server_sqlite.server as official

    async def main(db, sql, calls, warmup):
        async with create_client_server_memory_streams() as (client_streams, server_streams):
            @asynccontextmanager
            async def memory_stdio():
                yield server_streams
            official.stdio_server = memory_stdio
            async with anyio.create_task_group() as tg:
                tg.start_soon(official.main, db)
                async with ClientSession(*client_streams) as session:
                    await session.initialize()
                    times = []
                    for i in range(warmup + calls):
                        started = time.perf_counter()
                        await session.call_tool("read_query", {"query": sql})
                        if i >= warmup:
                            times.append(time.perf_counter() - started)
                tg.cancel_scope.cancel()
        print(json.dumps(times))

    anyio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    """
)


def measure_inprocess_official(db: Path, workdir: Path, sql: str, calls: int, warmup: int) -> list[float]:
    script = workdir / "official_inprocess.py"
    script.write_text(OFFICIAL_INPROCESS)
    out = subprocess.run(
        ["uvx", "--offline", *OFFICIAL[:-1], "python", str(script), str(db), sql, str(calls), str(warmup)],
        capture_output=True, text=True, timeout=300, env=child_env(), check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


async def measure_http(
    server_env: dict[str, str], clients: int, seconds: float
) -> tuple[float, float, list[float], float]:
    """Calls per second with 1 and with `clients` concurrent clients over streamable HTTP (ours only),
    the latencies of the second, and the peak memory of the server and its workers (MiB, sum of peaks)."""
    port = free_port()
    env = child_env({"MCP_LOG_LEVEL": "WARNING"}, server_env)
    proc = subprocess.Popen(
        ["uv", "run", "--frozen", "--project", str(ROOT), "python", str(ROOT / "server.py"),
         "--transport", "http", "--port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                await asyncio.sleep(0.1)
        url = f"http://127.0.0.1:{port}/mcp"

        async def run(count: int) -> tuple[float, list[float]]:
            latencies: list[float] = []
            async with AsyncExitStack() as stack:
                sessions = [await stack.enter_async_context(Client(url, mode="legacy")) for _ in range(count)]
                for session in sessions:  # warm each session (and its cached output schema)
                    await session.call_tool("query_database", {"query": ONE_ROW})
                stop = time.perf_counter() + seconds

                async def worker(session: Client) -> None:
                    while time.perf_counter() < stop:
                        started = time.perf_counter()
                        await session.call_tool("query_database", {"query": ONE_ROW})
                        latencies.append(time.perf_counter() - started)

                started = time.perf_counter()
                await asyncio.gather(*(worker(s) for s in sessions))
                return len(latencies) / (time.perf_counter() - started), latencies

        single, _ = await run(1)
        many, latencies = await run(clients)
        peak, _, _ = memory_mib([proc.pid, *descendants(proc.pid)])
        return single, many, latencies, peak
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# --- PostgreSQL ----------------------------------------------------------------------------------------

PG_ROLE = "bench_reader"
PG_DATABASE = "bench"
# The read-only role of the README, word for word; {role}, {password}, {database} filled in.
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


class PostgresUnavailable(Exception):
    """No PostgreSQL here: the section is skipped with this reason."""


def postgres_program(name: str) -> str | None:
    """A PostgreSQL server program: on PATH, or where Debian's packages put it (as test_postgres.py)."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]))
    return str(versions[-1]) if versions else None


@contextlib.contextmanager
def throwaway_cluster() -> Iterator[str]:
    """initdb + pg_ctl in a temporary folder on a free loopback port; yields a superuser URL, stops on exit.

    The same approach as test_postgres.py's: as root the cluster belongs to `postgres` (or `nobody`).
    """
    initdb, pg_ctl = postgres_program("initdb"), postgres_program("pg_ctl")
    if not (initdb and pg_ctl):
        raise PostgresUnavailable("PostgreSQL's initdb and pg_ctl are not installed (apt-get install postgresql)")
    try:
        import psycopg  # noqa: F401  (the dev group has it)
    except ImportError as exc:
        raise PostgresUnavailable(f"psycopg is not installed ({exc})") from None
    folder = Path(tempfile.mkdtemp(prefix="bench-pg-"))
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
            raise PostgresUnavailable(f"{Path(command[0]).name} failed: {result.stderr.strip()[-2000:]} {log}")

    started = False
    try:
        run(initdb, "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync")
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100"
        started = True  # from here on, stop it whatever happens (pg_ctl may fail after the server started)
        run(pg_ctl, "-D", str(data), "-l", str(folder / "log"), "-o", options, "-w", "-t", "60", "start")
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        if started:
            subprocess.run(
                [*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"],
                cwd=folder, capture_output=True, timeout=60, check=False,
            )  # fmt: skip
        shutil.rmtree(folder, ignore_errors=True)


def load_postgres(admin_url: str) -> str:
    """Database `bench` with the same `items` and `big` (COPY), and the README's read-only role; its URL."""
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {PG_DATABASE}")
    bench_url = admin_url.rsplit("/", 1)[0] + f"/{PG_DATABASE}"
    password = "bench-only"
    with psycopg.connect(bench_url, autocommit=True) as conn:
        for table, count in (("items", TABLE_ROWS), ("big", BIG_ROWS)):
            conn.execute(
                f"CREATE TABLE {table} (id integer NOT NULL, name text NOT NULL, email text NOT NULL,"
                " amount double precision NOT NULL, created text)"
            )
            with (
                conn.cursor() as cursor,
                cursor.copy(f"COPY {table} (id, name, email, amount, created) FROM STDIN") as copy,
            ):
                for row in item_rows(count):
                    copy.write_row(row)
            conn.execute(f"ALTER TABLE {table} ADD PRIMARY KEY (id)")
            conn.execute(f"VACUUM ANALYZE {table}")
        conn.execute(READ_ONLY_ROLE_RECIPE.format(role=PG_ROLE, password=password, database=PG_DATABASE))
    host = bench_url.split("@", 1)[1]
    return f"postgresql://{PG_ROLE}:{password}@{host}"


def measure_pg_floor(url: str, sql: str, calls: int, warmup: int) -> list[float]:
    """psycopg's own floor: one open connection, execute, fetchall, compact json.dumps, in this process."""
    import psycopg

    times = []
    with psycopg.connect(url, autocommit=True) as conn:
        for i in range(warmup + calls):
            started = time.perf_counter()
            with conn.cursor() as cursor:
                cursor.execute(sql)
                columns = [d.name for d in cursor.description or ()]
                rows = [list(r) for r in cursor.fetchall()]
            json.dumps({"columns": columns, "rows": rows}, separators=(",", ":"))
            if i >= warmup:
                times.append(time.perf_counter() - started)
    return times


def measure_pg_deep_floor(url: str, passes: int) -> Deep:
    """psycopg's floor of deep pages: a server-side cursor in one transaction, fetchmany + json.dumps."""
    import psycopg

    found: Deep = {}
    for _ in range(passes):
        with psycopg.connect(url) as conn, conn.transaction(), conn.cursor("deep") as cursor:
            times = []
            started = time.perf_counter()
            cursor.execute(BIG_QUERY)
            columns = None
            while rows := cursor.fetchmany(DEEP_ROWS):
                columns = columns or [d.name for d in cursor.description or ()]
                page_json(columns, rows)
                times.append(time.perf_counter() - started)
                started = time.perf_counter()
        deep_record(found, times)
    return found


def measure_pg_floor_rate(url: str, sql: str, clients: int, seconds: float) -> float:
    """Calls per second of the psycopg floor with `clients` threads, one connection each."""
    import psycopg

    conns = [psycopg.connect(url, autocommit=True) for _ in range(clients)]
    counts = [0] * clients
    try:
        stop = time.perf_counter() + seconds

        def worker(n: int) -> None:
            conn = conns[n]
            while time.perf_counter() < stop:
                with conn.cursor() as cursor:
                    cursor.execute(sql)
                    columns = [d.name for d in cursor.description or ()]
                    rows = [list(r) for r in cursor.fetchall()]
                json.dumps({"columns": columns, "rows": rows}, separators=(",", ":"))
                counts[n] += 1

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(clients)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return sum(counts) / (time.perf_counter() - started)
    finally:
        for conn in conns:
            conn.close()


async def measure_postgres(args: argparse.Namespace, reps: Repetitions, results: Results) -> None:
    """The PostgreSQL section: ours with DATABASE_URL against the psycopg floor, on a throwaway cluster."""
    rows = results.pg_rows
    os.environ.pop("MCP_DB_PATH", None)  # the in-process section sets it; DATABASE_URL refuses both
    with tempfile.TemporaryDirectory(prefix="bench-pg-files-") as tmp, throwaway_cluster() as admin_url:
        t0 = time.perf_counter()
        url = load_postgres(admin_url)
        loaded = time.perf_counter() - t0
        print(f"PostgreSQL: loaded items {TABLE_ROWS:,} rows, big {BIG_ROWS:,} rows (COPY) in {loaded:.1f} s")
        server_env = {"DATABASE_URL": url, "MCP_FILES_ROOT": tmp}
        ours = Target(
            "ours",
            ["uv", "run", "--frozen", "--project", str(ROOT), "python", str(ROOT / "server.py")],
            {**server_env, "MCP_MAX_ROWS": str(LARGE), "MCP_LOG_LEVEL": "WARNING"},
            "query_database",
            "query",
        )
        async with ours.connect() as client:  # warm-up start (bytecode, pool), and a check of the data
            result = await ours.query(client, LARGE_QUERY)
            sent = (result.structured_content or {}).get("row_count")
            if sent != LARGE:
                raise RuntimeError(f"ours over PostgreSQL sent {sent} rows for {LARGE_QUERY!r}, expected {LARGE}")

        small = (await measure_calls((ours,), ONE_ROW, reps.calls, warmup=20))["ours"]
        floor_small = measure_pg_floor(url, ONE_ROW, reps.calls, warmup=20)
        for label, fn in (("median", median), ("p95", p95)):
            o, f = fn(small), fn(floor_small)
            rows.append((f"PG 1-row SELECT over stdio, per call ({label})", ms(o), ms(f), ratio(o, f)))

        large = median((await measure_calls((ours,), LARGE_QUERY, reps.large_calls, warmup=2))["ours"])
        floor_large = median(measure_pg_floor(url, LARGE_QUERY, reps.large_calls, warmup=2))
        rows.append(
            (f"PG {LARGE:,}-row SELECT over stdio (median)", ms(large), ms(floor_large), ratio(large, floor_large))
        )
        results.figures["pg large"], results.figures["pg large floor"] = large, floor_large
        elapsed, checks = await measure_parts(ours, LARGE_QUERY, reps.large_calls)
        rows.append(("  ... of which the server's own elapsed_ms", ms(median(elapsed)), "", ""))
        rows.append(("  ... of which the client's output-schema check", ms(median(checks)), "", ""))

        single, many, latencies, peak = await measure_http(server_env, args.clients, args.http_seconds)
        floor_single = measure_pg_floor_rate(url, ONE_ROW, 1, args.http_seconds)
        floor_many = measure_pg_floor_rate(url, ONE_ROW, args.clients, args.http_seconds)
        figure = f"PG HTTP 1-row SELECT, {args.clients} clients: calls/s (1 client)"
        rows.append(
            (figure, f"{many:.0f} ({single:.0f})", f"{floor_many:.0f} ({floor_single:.0f})", ratio(floor_many, many))
        )
        spread = f"{ms(median(latencies))} / {ms(p95(latencies))}"
        rows.append((f"PG HTTP {args.clients} clients: per call median / p95", spread, "", ""))
        rows.append((f"PG HTTP {args.clients} clients: peak RSS, server + workers", f"{peak:.0f} MiB", "", ""))
        results.memory.append((f"PostgreSQL over HTTP, {args.clients} clients", peak))

        deep_ours = Target(ours.name, ours.command, {**ours.env, **DEEP_ENV}, ours.tool, ours.arg)
        found, memory = await measure_deep([("PostgreSQL (ours)", deep_ours, reps.deep_passes)], reps.deep_passes)
        floor = measure_pg_deep_floor(url, reps.deep_passes)
        results.add_deep("PostgreSQL (ours)", found["PostgreSQL (ours)"], memory["PostgreSQL (ours)"])
        results.add_deep("psycopg floor, server-side cursor", floor)
        results.figures["pg deep"] = deep_ratio(found["PostgreSQL (ours)"])
        results.memory.append(("PostgreSQL, deep pages", memory["PostgreSQL (ours)"]))


# --- Report ------------------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def deep_ratio(found: Deep) -> float:
    return median(found["last"]) / median(found["second"])


Row = tuple[str, str, str, str, str, str]
HEADER: Row = ("figure", "ours", "official", "bare FastMCP", "floor", "ours/official")
PgRow = tuple[str, str, str, str]
PG_HEADER: PgRow = ("PostgreSQL", "ours (DATABASE_URL)", "psycopg floor", "ours/floor")
DeepRow = tuple[str, str, str, str, str, str, str]
DEEP_HEADER: DeepRow = (
    f"deep pages, {BIG_QUERY}, max_rows {DEEP_ROWS:,}",
    "page 1",
    "pages 2-4",
    "last 3 pages",
    "last/second",
    "all 100 pages",
    "peak RSS",
)


class Repetitions:
    """How many times each thing is measured: fewer with --quick."""

    def __init__(self, quick: bool):
        self.starts, self.calls, self.large_calls, self.deep_passes = (3, 60, 5, 1) if quick else (9, 300, 21, 3)


class Results:
    """What the sections found: their tables, the figures the targets read, and every memory peak."""

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.pg_rows: list[PgRow] = []
        self.deep: list[DeepRow] = []
        self.figures: dict[str, float] = {}
        self.memory: list[tuple[str, float]] = []  # (where, MiB: server + workers, sum of peaks)

    def add_deep(self, label: str, found: Deep, peak: float | None = None) -> None:
        second, last = median(found["second"]), median(found["last"])
        self.deep.append(
            (
                label,
                ms(median(found["page 1"])),
                ms(second),
                ms(last),
                ratio(last, second),
                f"{median(found['whole']):.2f} s",
                f"{peak:.0f} MiB" if peak is not None else "",
            )
        )

    def targets(self) -> list[tuple[str, bool | None, str]]:
        """(target, met: None when this run did not measure it, the figures)."""
        f = self.figures
        checks: list[tuple[str, bool | None, str]] = []

        def check(name: str, keys: tuple[str, ...], met: Any, figure: Any) -> None:
            if all(k in f for k in keys):
                checks.append((name, bool(met()), figure()))
            else:
                checks.append((name, None, "not measured in this run"))

        check(
            "per-call median over stdio at most the official server's",
            ("small", "small official"),
            lambda: f["small"] <= f["small official"],
            lambda: f"{ms(f['small'])} vs {ms(f['small official'])} ({ratio(f['small'], f['small official'])})",
        )
        for key, base, name in (("large", "large official", "SQLite"), ("pg large", "pg large floor", "PostgreSQL")):
            was = PREVIOUS[f"{key} / {base.split()[-1]}"]
            check(
                f"{LARGE:,}-row SELECT against {base.split()[-1]} at most the previous run's ratio ({name})",
                (key, base),
                lambda key=key, base=base, was=was: f[key] / f[base] <= was,
                lambda key=key, base=base, was=was: f"{f[key] / f[base]:.2f}x vs {was:.2f}x",
            )
        check(
            f"start-up against bare FastMCP no slower than the previous run's (within {NOISE - 1:.0%})",
            ("start-up", "start-up bare"),
            lambda: f["start-up"] / f["start-up bare"] <= PREVIOUS["start-up / bare"] * NOISE,
            lambda: (
                f"{f['start-up'] / f['start-up bare']:.2f}x vs {PREVIOUS['start-up / bare']:.2f}x"
                f" ({ms(f['start-up'])}; bare {ms(f['start-up bare'])}, official {ms(f['start-up official'])})"
            ),
        )
        for key, name in (("deep", "SQLite WAL"), ("pg deep", "PostgreSQL")):
            check(
                f"last pages of a {BIG_ROWS:,}-row result at most twice the second page's ({name})",
                (key,),
                lambda key=key: f[key] <= 2,
                lambda key=key: f"{f[key]:.2f}x",
            )
        if self.memory:
            where, peak = max(self.memory, key=lambda m: m[1])
            met = peak < MEMORY_TARGET_MIB
            checks.append(("peak memory of server + workers under 1 GiB", met, f"at most {peak:.0f} MiB ({where})"))
        else:
            checks.append(("peak memory of server + workers under 1 GiB", None, "not measured in this run"))
        return checks


def print_table(rows: list[Any], header: tuple[str, ...] = HEADER) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for i, row in enumerate([header, *rows]):
        print("  ".join(cell.ljust(widths[j]) if j == 0 else cell.rjust(widths[j]) for j, cell in enumerate(row)))
        if i == 0:
            print("  ".join("-" * w for w in widths))


SECTIONS = ("start", "small", "inprocess", "large", "wire", "memory", "http", "deep", "pg")


async def run(args: argparse.Namespace) -> None:
    only = set(args.only or SECTIONS)
    reps = Repetitions(args.quick)
    results = Results()
    pg_skipped = ""
    began, load_before = time.perf_counter(), " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average at the start: {load_before}")
    if only - {"pg"}:
        await run_sqlite(args, only, reps, results)
    if "pg" in only:
        try:
            await asyncio.wait_for(measure_postgres(args, reps, results), timeout=args.pg_timeout)
        except PostgresUnavailable as exc:
            pg_skipped = f"PostgreSQL section skipped: {exc}"
            print(pg_skipped)
        except TimeoutError:
            pg_skipped = f"PostgreSQL section gave up after {args.pg_timeout:.0f} s (--pg-timeout); cluster stopped"
            print(pg_skipped)

    print()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, Python {platform.python_version()},")
    print(f"         SQLite {sqlite3.sqlite_version}, load average {load_before} at the start, {load} at the end")
    print("children: bytecode cached (PYTHONDONTWRITEBYTECODE unset; a warm-up start wrote __pycache__ first)")
    print(
        f"repetitions: {reps.starts} starts, {reps.calls} small calls, {reps.large_calls} large calls, interleaved;"
        f" {reps.deep_passes} deep-page passes; {args.http_seconds:g} s per HTTP phase; run took"
        f" {time.perf_counter() - began:.0f} s"
    )
    print("memory: server + workers, the sum of each process's peak (VmHWM): an upper bound")
    if results.rows:
        print()
        print_table(results.rows)
    if results.pg_rows:
        print()
        print_table(results.pg_rows, PG_HEADER)
        print(
            f"  PostgreSQL {postgres_version()}, loopback TCP, role {PG_ROLE}, the server's pool at its default size."
        )
        print("  ours/floor is a ratio of time per call throughout (for calls/s: the floor's rate over ours).")
    elif pg_skipped:
        print()
        print(pg_skipped)
    if results.deep:
        print()
        print_table(results.deep, DEEP_HEADER)
        print(
            f"  over stdio, times as the client sees them; last 3 pages = rows {BIG_ROWS - 3 * DEEP_ROWS + 1:,}"
            f"-{BIG_ROWS:,}; last/second = their median over the median of pages 2-4"
        )
    print()
    print("targets:")
    for name, met, figure in results.targets():
        mark = "-" if met is None else "x" if met else " "
        print(f"  [{mark}] {name}: {figure}")


def postgres_version() -> str:
    initdb = postgres_program("initdb")
    if not initdb:
        return "?"
    out = subprocess.run([initdb, "--version"], capture_output=True, text=True, check=False).stdout
    return out.strip().split(")", 1)[-1].strip() or "?"


async def run_sqlite(args: argparse.Namespace, only: set[str], reps: Repetitions, results: Results) -> None:
    """The SQLite sections: ours against the official server, bare FastMCP and the sqlite3 floor."""
    rows, figures = results.rows, results.figures
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        workdir = Path(tmp)
        db, files = workdir / "bench.db", workdir / "files"
        files.mkdir()
        t0 = time.perf_counter()
        build_database(db)
        print(f"built {db.name}: items {TABLE_ROWS:,} rows, big {BIG_ROWS:,} rows in {time.perf_counter() - t0:.1f} s")

        # Warm-up: fetch the official server once online, write bytecode for all; nothing timed.
        bare = bare_fastmcp(db, workdir)
        for target in (*targets(db, files, offline=False), bare):
            async with target.connect() as client:
                await target.query(client, ONE_ROW)
        ours, official = targets(db, files, offline=True)
        trio = (ours, official, bare)

        if "start" in only:
            start = await measure_startup(trio, reps.starts)
            o, f, b = (median(start[t.name]) for t in trio)
            rows.append(("start-up, spawn to initialize response (median)", ms(o), ms(f), ms(b), "", ratio(o, f)))
            figures["start-up"], figures["start-up official"], figures["start-up bare"] = o, f, b

        if "small" in only:
            small = await measure_calls(trio, ONE_ROW, reps.calls, warmup=20)
            floor_small = measure_floor(db, ONE_ROW, reps.calls)
            for label, fn in (("median", median), ("p95", p95)):
                o, f, b = (fn(small[t.name]) for t in trio)
                figure = f"1-row SELECT over stdio, per call ({label})"
                rows.append((figure, ms(o), ms(f), ms(b), ms(fn(floor_small)), ratio(o, f)))
            figures["small"], figures["small official"] = median(small["ours"]), median(small["official"])

        if "inprocess" in only:
            in_ours = await measure_inprocess_ours(db, files, ONE_ROW, reps.calls, warmup=20)
            in_official = measure_inprocess_official(db, workdir, ONE_ROW, reps.calls, warmup=20)
            floor_small = measure_floor(db, ONE_ROW, reps.calls)
            for label, fn in (("median", median), ("p95", p95)):
                o, f = fn(in_ours), fn(in_official)
                figure = f"1-row SELECT in-process, per call ({label})"
                rows.append((figure, ms(o), ms(f), "", ms(fn(floor_small)), ratio(o, f)))

        if "large" in only:
            large = await measure_calls(trio, LARGE_QUERY, reps.large_calls, warmup=2)
            fl = median(measure_floor(db, LARGE_QUERY, reps.large_calls))
            o, f, b = (median(large[t.name]) for t in trio)
            rows.append((f"{LARGE:,}-row SELECT over stdio (median)", ms(o), ms(f), ms(b), ms(fl), ratio(o, f)))
            rows.append(("  ... / raw floor", ratio(o, fl), ratio(f, fl), ratio(b, fl), "1.00x", ""))
            figures["large"], figures["large official"] = o, f
            elapsed, checks = await measure_parts(ours, LARGE_QUERY, reps.large_calls)
            rows.append(("  ... of which the server's own elapsed_ms", ms(median(elapsed)), "", "", "", ""))
            rows.append(("  ... of which the client's output-schema check", ms(median(checks)), "none", "", "", ""))

        if "wire" in only:
            compact = compact_rows_bytes(db, LARGE_QUERY)
            wire = {t.name: await measure_wire(t, LARGE_QUERY, workdir) for t in trio}
            o, f, b = (wire[t.name] for t in trio)
            figure = f"{LARGE:,}-row result, bytes on the wire"
            rows.append((figure, f"{o:,}", f"{f:,}", f"{b:,}", f"{compact:,}", ratio(o, f)))
            rows.append(
                (
                    "  ... / compact JSON of its rows",
                    ratio(o, compact),
                    ratio(f, compact),
                    ratio(b, compact),
                    "1.00x",
                    "",
                )
            )

        if "memory" in only:
            capped = await measure_memory(ours, BIG_QUERY, {"MCP_MAX_ROWS": "1000"})
            raised = await measure_memory(ours, BIG_QUERY, {"MCP_MAX_ROWS": "100000"})
            theirs = await measure_memory(official, BIG_QUERY, {})
            for label, mem in (("cap 1,000", capped), ("cap 100,000", raised)):
                figure = f"SELECT over {BIG_ROWS:,} rows, {label}: peak RSS (rows sent)"
                peaks = f"{mem[0]:.0f} MiB ({mem[2]:,})", f"{theirs[0]:.0f} MiB ({theirs[2]:,})"
                rows.append((figure, *peaks, "", "", ratio(mem[0], theirs[0])))
                results.memory.append((f"SQLite over stdio, SELECT * FROM big, {label}", mem[0]))
            before = f"{capped[1]:.0f} MiB", f"{theirs[1]:.0f} MiB"
            rows.append(("  ... RSS after start-up, before the query", *before, "", "", ""))
            counted = f"{raised[3]} (server + workers)", f"{theirs[3]}"
            rows.append(("  ... python processes counted", *counted, "", "", ""))

        if "http" in only:
            server_env = {"MCP_DB_PATH": str(db), "MCP_FILES_ROOT": str(files)}
            single, many, latencies, peak = await measure_http(server_env, args.clients, args.http_seconds)
            figure = f"HTTP 1-row SELECT, {args.clients} clients: calls/s (1 client)"
            rows.append((figure, f"{many:.0f} ({single:.0f})", "n/a: stdio only", "", "", ""))
            spread = f"{ms(median(latencies))} / {ms(p95(latencies))}"
            rows.append((f"HTTP {args.clients} clients: per call median / p95", spread, "", "", "", ""))
            rows.append((f"HTTP {args.clients} clients: peak RSS, server + workers", f"{peak:.0f} MiB", "", "", "", ""))
            results.memory.append((f"SQLite over HTTP, {args.clients} clients", peak))

        if "deep" in only:
            wal = workdir / "bench-wal.db"
            wal_copy(db, wal)
            wal_ours, _ = targets(wal, files, offline=True, extra=DEEP_ENV)
            journal_ours, _ = targets(db, files, offline=True, extra=DEEP_ENV)
            named = [
                ("SQLite WAL (ours)", wal_ours, reps.deep_passes),
                ("SQLite rollback journal (ours)", journal_ours, 1),  # ~200 s a pass on a busy machine
            ]
            found, memory = await measure_deep(named, reps.deep_passes)
            for name, _, _ in named:
                results.add_deep(name, found[name], memory[name])
                results.memory.append((f"{name}, deep pages", memory[name]))
            results.add_deep("sqlite3 floor, one open cursor", measure_deep_floor(db, reps.deep_passes))
            figures["deep"] = deep_ratio(found["SQLite WAL (ours)"])


def relay(counts: Path, command: list[str]) -> int:
    """Pass a server's stdout through unchanged, writing the byte size of each line to `counts`."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE)
    sizes: list[int] = []
    assert proc.stdout is not None
    out = sys.stdout.buffer
    try:
        for line in proc.stdout:
            out.write(line)
            out.flush()
            sizes.append(len(line))
    except (BrokenPipeError, KeyboardInterrupt):
        pass
    finally:
        counts.write_text(json.dumps(sizes))
        proc.terminate()
    return proc.wait()


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--relay":
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        raise SystemExit(relay(Path(sys.argv[2]), sys.argv[4:]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions: a smoke test, not a measurement")
    parser.add_argument("--clients", type=int, default=16, help="concurrent HTTP clients (default 16)")
    parser.add_argument("--http-seconds", type=float, default=3.0, help="duration of each HTTP phase")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these measurements")
    parser.add_argument(
        "--pg-timeout", type=float, default=900.0, help="give up the PostgreSQL section after this many seconds"
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
