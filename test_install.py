"""Tests for the ways a user installs this server: each launches the server the way that installer
would (its command, arguments and environment, from a folder of its own) and talks to it over stdio
with FastMCP's own client."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import sys
import tomllib
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from fastmcp import Client
from fastmcp.client.transports import StdioTransport
from pydantic import SecretStr

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


# --- Registry entry: server.json for the official MCP registry ---------------------------------------

SERVER_JSON = HERE / "server.json"
SCHEMAS = "https://static.modelcontextprotocol.io/schemas/"  # where the registry publishes its schemas
MAIN_SETTINGS = ["MCP_DB_PATH", "MCP_DATABASE_URL", "MCP_FILES_ROOT", "MCP_MAX_ROWS", "MCP_QUERY_TIMEOUT_MS"]


def pyproject() -> dict[str, Any]:
    return tomllib.loads((HERE / "pyproject.toml").read_text())


def registry_errors(entry: dict[str, Any]) -> list[str]:
    """What the registry's schema finds wrong with a server.json: the schema its `$schema` names, read
    from schemas/ (vendored there, see schemas/README.md: CI cannot reach the registry's site)."""
    url = entry.get("$schema", "")
    assert url.startswith(SCHEMAS), f"$schema {url!r} is not one of the registry's schemas"
    schema = json.loads((HERE / "schemas" / url.removeprefix(SCHEMAS)).read_text())
    assert schema["$id"] == url, "the vendored schema is another version than $schema names"
    checker = jsonschema.validators.validator_for(schema)
    checker.check_schema(schema)
    errors = checker(schema, format_checker=checker.FORMAT_CHECKER).iter_errors(entry)
    return sorted(f"{'/'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}" for error in errors)


def test_server_json_is_valid_against_the_registry_schema():
    assert registry_errors(json.loads(SERVER_JSON.read_text())) == []


def broken(change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    entry = json.loads(SERVER_JSON.read_text())
    change(entry)
    return entry


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda entry: entry.update(name="safe-data-mcp"), "name"),  # no namespace/ part
        (lambda entry: entry.update(description="x" * 101), "description"),  # the registry's cap is 100
        (lambda entry: entry.pop("version"), "(top)"),
        (lambda entry: entry["packages"][0].update(version="latest"), "packages/0/version"),
        (lambda entry: entry["packages"][0].pop("identifier"), "packages/0"),
        (lambda entry: entry["packages"][0].update(transport={"type": "tcp"}), "packages/0/transport"),
        (lambda entry: entry["packages"][0]["environmentVariables"][0].pop("name"), "environmentVariables/0"),
        (lambda entry: entry["packages"][0]["environmentVariables"][1].update(isSecret="yes"), "isSecret"),
    ],
    ids=["name", "description", "version", "package-version", "identifier", "transport", "env-name", "secret"],
)
def test_a_broken_server_json_fails_the_registry_schema(change, where):
    errors = registry_errors(broken(change))
    assert errors and any(where in error for error in errors), errors


def test_server_json_agrees_with_pyproject_and_the_settings():
    from server import SERVER_VERSION, Settings

    entry, project = json.loads(SERVER_JSON.read_text()), pyproject()["project"]
    (package,) = entry["packages"]
    assert entry["version"] == package["version"] == project["version"] == SERVER_VERSION
    assert (package["registryType"], package["identifier"], package["runtimeHint"]) == ("pypi", project["name"], "uvx")
    assert project["name"] in project["scripts"], "uvx runs the script named like the package"
    variables = {variable["name"]: variable for variable in package["environmentVariables"]}
    assert list(variables) == MAIN_SETTINGS
    for name, variable in variables.items():
        field = Settings.model_fields[name.removeprefix("MCP_").lower()]
        kinds = typing.get_args(field.annotation) or (field.annotation,)
        assert variable.get("isSecret", False) == (SecretStr in kinds), name
        assert (variable["format"] == "filepath") == (Path in kinds), name
        assert (variable["format"] == "number") == (int in kinds), name
        assert variable.get("default") == (None if field.default is None else str(field.default)), name
        low = next((m.ge for m in field.metadata if hasattr(m, "ge")), None)
        high = next((m.le for m in field.metadata if hasattr(m, "le")), None)
        if (low, high) != (None, None):
            assert f"({low} to {high})" in variable["description"], f"{name} takes {low} to {high}"
