"""Tests for the ways a user installs this server: each launches the server the way that installer
would (its command, arguments and environment, from a folder of its own) and talks to it over stdio
with FastMCP's own client."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
from fastmcp import Client
from fastmcp.client.transports import StdioTransport

HERE = Path(__file__).parent
PYTHON = sys.executable
CI = os.environ.get("CI") == "true"


def needs(program: str) -> str:
    """The path of a program the test needs: CI fails without it, elsewhere the test skips and says why."""
    path = shutil.which(program)
    if path is None:
        message = f"{program} is not on the PATH: install it to run this test (CI installs it in .ci/run)"
        if CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


def shop_database(path: Path) -> Path:
    """A user's own small database, so a launch is seen serving the user's data, not the demo."""
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
        INSERT INTO customers VALUES (1, 'Ada'), (2, 'Kofi'), (3, 'Mei');
        """
    )
    conn.commit()
    conn.close()
    return path


def clean_environment(**settings: str) -> dict[str, str]:
    """What an installer's launch sees: the machine's PATH and HOME, no MCP_* from the test run, the settings."""
    keep = ("PATH", "HOME", "TMPDIR", "LANG", "UV_CACHE_DIR", "XDG_CACHE_HOME", "SYSTEMROOT")
    return {name: os.environ[name] for name in keep if name in os.environ} | settings


async def launched(command: str, args: list[str], env: dict[str, str], cwd: Path) -> dict[str, Any]:
    """Start a server as an installer would, list its tools, run one query and read the settings."""
    transport = StdioTransport(command=command, args=args, env=env, cwd=str(cwd))
    async with Client(transport, timeout=120) as client:
        tools = sorted(tool.name for tool in await client.list_tools())
        result = await client.call_tool("query_database", {"query": "SELECT name FROM customers ORDER BY id"})
        settings = json.loads((await client.read_resource("config://app/settings"))[0].text)
    return {"tools": tools, "rows": result.structured_content["rows"], "settings": settings}


# --- From a checkout: the command the README gives developers ------------------------------------


async def test_a_checkout_runs_with_python(tmp_path):
    database = shop_database(tmp_path / "shop.db")
    env = clean_environment(MCP_DB_PATH=str(database), MCP_MAX_ROWS="2")
    served = await launched(PYTHON, [str(HERE / "server.py")], env, cwd=tmp_path)
    assert "query_database" in served["tools"] and served["rows"] == [["Ada"], ["Kofi"]]
    assert served["settings"]["max_rows"] == 2
