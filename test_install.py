"""Tests for the ways a user installs this server: each launches the server the way that installer
would (its command, arguments and environment, from a folder of its own) and talks to it over stdio
with FastMCP's own client."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tomllib
import zipfile
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
    """What an installer's launch sees: the machine's environment (its certificates, proxies and package
    caches, which uv needs to reach the index) without any trace of this test run's virtual environment
    or MCP_* settings, and then the given settings."""
    run_only = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "UV_PROJECT_ENVIRONMENT")
    machine = {k: v for k, v in os.environ.items() if not k.startswith("MCP_") and k not in run_only}
    own_venv = (HERE / ".venv").resolve()
    paths = machine.get("PATH", os.defpath).split(os.pathsep)
    machine["PATH"] = os.pathsep.join(p for p in paths if p and not Path(p).resolve().is_relative_to(own_venv))
    return machine | settings


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


# --- Claude Desktop bundle -------------------------------------------------------------------------
# manifest.json and .mcpbignore make the bundle; the README gives the one command that packs it with this
# version of the official CLI (the same as MCPB_CLI below).

MCPB_CLI = "@anthropic-ai/mcpb@2.1.2"
BUNDLE_FILES = {"manifest.json", "server.py", "pyproject.toml", "uv.lock", "README.md"}


@pytest.fixture(scope="module")
def mcpb(tmp_path_factory) -> list[str]:
    """The official MCPB CLI, installed once for these tests (npm keeps its own download cache)."""
    node, npm = needs("node"), needs("npm")
    prefix = tmp_path_factory.mktemp("mcpb-cli")
    subprocess.run(
        [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--loglevel=error", MCPB_CLI],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return [node, str(prefix / "node_modules" / "@anthropic-ai" / "mcpb" / "dist" / "cli" / "cli.js")]


def run_mcpb(mcpb: list[str], *args: str, cwd: Path = HERE) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*mcpb, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def bundle(mcpb, tmp_path_factory) -> Path:
    """The .mcpb that the README's pack command makes from this checkout."""
    output = tmp_path_factory.mktemp("dist") / "safe-data-mcp.mcpb"
    packed = run_mcpb(mcpb, "pack", str(HERE), str(output))
    assert packed.returncode == 0, packed.stdout + packed.stderr
    return output


def installed(bundle: Path, folder: Path) -> Path:
    """Unpack the bundle into a folder of its own, as Claude Desktop does when a user installs it."""
    with zipfile.ZipFile(bundle) as archive:
        archive.extractall(folder)
    return folder


def desktop_config(manifest: dict[str, Any], folder: Path, values: dict[str, Any]) -> dict[str, Any]:
    """The manifest's mcp_config with the placeholders replaced as Claude Desktop replaces them: the bundle's
    folder, the user's folders, and each user_config value, the user's or else its default. A value with
    neither stays the literal `${user_config.NAME}`, as Desktop leaves it (so every optional field needs a
    default)."""
    given = {name: option["default"] for name, option in manifest["user_config"].items() if "default" in option}
    given |= values
    variables = {"__dirname": str(folder), "HOME": str(Path.home()), "/": os.sep, "pathSeparator": os.sep}
    variables |= {f"user_config.{name}": str(value) for name, value in given.items()}

    def substitute(text: str) -> str:
        return re.sub(r"\$\{([^}]+)\}", lambda m: variables.get(m.group(1), m.group(0)), text)

    config = manifest["server"]["mcp_config"]
    return {
        "command": substitute(config["command"]),
        "args": [substitute(arg) for arg in config.get("args", [])],
        "env": {name: substitute(value) for name, value in config.get("env", {}).items()},
    }


def launch_environment(env: dict[str, str]) -> dict[str, str]:
    """Desktop's environment for the server, with the Python minor version pinned to this test run's, whose
    wheels `uv sync` has already put in uv's cache."""
    return clean_environment(**env) | {"UV_PYTHON": f"{sys.version_info.major}.{sys.version_info.minor}"}


def test_the_bundle_manifest_passes_the_official_validation(mcpb):
    checked = run_mcpb(mcpb, "validate", str(HERE / "manifest.json"))
    assert checked.returncode == 0 and "validation passes" in checked.stdout, checked.stdout + checked.stderr


def test_a_manifest_with_a_mistake_fails_the_validation(mcpb, tmp_path):
    manifest = json.loads((HERE / "manifest.json").read_text())
    manifest["user_config"]["max_rows"]["type"] = "integer"  # the format knows only number
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    checked = run_mcpb(mcpb, "validate", str(tmp_path / "manifest.json"))
    assert checked.returncode != 0 and "user_config.max_rows.type" in checked.stdout, checked.stdout


def test_the_bundle_holds_only_what_the_server_needs(bundle):
    with zipfile.ZipFile(bundle) as archive:
        assert set(archive.namelist()) == BUNDLE_FILES


def test_the_manifest_matches_the_server(tmp_path):
    manifest = json.loads((HERE / "manifest.json").read_text())
    assert manifest["version"] == tomllib.loads((HERE / "pyproject.toml").read_text())["project"]["version"]
    env = manifest["server"]["mcp_config"]["env"]
    url_field = re.fullmatch(r"\$\{user_config\.(\w+)\}", env["MCP_DATABASE_URL"]).group(1)
    assert manifest["user_config"][url_field]["sensitive"] is True  # Desktop keeps it in the OS keychain
    # The bounds the form enforces are the bounds the server accepts.
    from server import Settings

    for variable, field in (("MCP_MAX_ROWS", "max_rows"), ("MCP_QUERY_TIMEOUT_MS", "query_timeout_ms")):
        option = manifest["user_config"][re.fullmatch(r"\$\{user_config\.(\w+)\}", env[variable]).group(1)]
        bounds = {type(m).__name__: m for m in Settings.model_fields[field].metadata}
        assert (option["min"], option["max"]) == (bounds["Ge"].ge, bounds["Le"].le)
        assert option["default"] == Settings.model_fields[field].default


async def test_the_installed_bundle_serves_the_users_settings(bundle, tmp_path):
    folder = installed(bundle, tmp_path / "Claude Extensions" / "safe-data-mcp")
    manifest = json.loads((folder / "manifest.json").read_text())
    database = shop_database(tmp_path / "shop.db")
    exports = tmp_path / "shop-exports"
    exports.mkdir()
    values = {"sqlite_file": database, "files_folder": exports, "max_rows": 2}
    config = desktop_config(manifest, folder, values)  # Desktop runs its own uv, whatever the command says
    assert not [v for v in [*config["args"], *config["env"].values()] if "${" in v], config  # all substituted
    served = await launched(needs(config["command"]), config["args"], launch_environment(config["env"]), folder)
    assert served["tools"] == sorted(tool["name"] for tool in manifest["tools"])
    assert served["rows"] == [["Ada"], ["Kofi"]]
    settings = served["settings"]
    assert (settings["db_path"], settings["files_root"]) == (str(database), str(exports))
    assert (settings["max_rows"], settings["query_timeout_ms"]) == (2, 5000)
    assert not settings["demo"] and settings["database_url"] == "unset"
    assert (folder / ".venv").is_dir()  # uv built the bundle's own environment, not this checkout's


async def test_the_installed_bundle_left_blank_serves_the_demo(bundle, tmp_path):
    folder = installed(bundle, tmp_path / "Claude Extensions" / "safe-data-mcp")
    manifest = json.loads((folder / "manifest.json").read_text())
    config = desktop_config(manifest, folder, {})  # the user fills in nothing
    assert not [v for v in [*config["args"], *config["env"].values()] if "${" in v], config  # all substituted
    assert config["env"]["MCP_DB_PATH"] == "" and config["env"]["MCP_FILES_ROOT"] == ""
    served = await launched(needs(config["command"]), config["args"], launch_environment(config["env"]), folder)
    settings = served["settings"]
    assert (settings["demo"], settings["database_url"], settings["settings_file"]) == (
        ["database", "files"],
        "unset",
        None,
    )
    assert len(served["rows"]) == 60 and settings["max_rows"] == 1000  # the whole demo: a page of the default size


# --- uvx: the server without a clone --------------------------------------------------------------


async def test_uvx_runs_a_checkout_from_another_folder(tmp_path):
    uvx = needs("uvx")
    database = shop_database(tmp_path / "shop.db")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = clean_environment(MCP_DB_PATH=str(database), MCP_MAX_ROWS="2")
    served = await launched(uvx, ["--from", str(HERE), "safe-data-mcp"], env, cwd=elsewhere)
    assert "query_database" in served["tools"] and served["rows"] == [["Ada"], ["Kofi"]]
    assert served["settings"]["max_rows"] == 2 and not list(elsewhere.iterdir())  # nothing left behind


async def test_uvx_runs_a_git_url(tmp_path):
    uvx = needs("uvx")
    if subprocess.run(["git", "-C", str(HERE), "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("this copy is not a git checkout: run the tests from a clone to try a git+file:// URL")
    database = shop_database(tmp_path / "shop.db")
    env = clean_environment(MCP_DB_PATH=str(database), MCP_QUERY_TIMEOUT_MS="4000")
    served = await launched(uvx, ["--from", f"git+{HERE.resolve().as_uri()}", "safe-data-mcp"], env, cwd=tmp_path)
    assert served["rows"] == [["Ada"], ["Kofi"], ["Mei"]] and served["settings"]["query_timeout_ms"] == 4000


# --- FastMCP's installers: the configuration each writes launches the server with its settings ------


def fastmcp_install(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [PYTHON, "-m", "fastmcp.cli", "install", *args]
    done = subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=120, env=clean_environment())
    assert done.returncode == 0, done.stdout + done.stderr
    return done


async def launch_entry(entry: dict[str, Any], cwd: Path) -> dict[str, Any]:
    """Launch one mcpServers entry as a client does: its command, its arguments, its env over the machine's."""
    return await launched(entry["command"], entry["args"], clean_environment(**entry.get("env", {})), cwd=cwd)


async def test_fastmcp_mcp_json_launches_the_server_with_settings(tmp_path):
    needs("uv")
    database = shop_database(tmp_path / "shop.db")
    env_file = tmp_path / "settings.env"
    env_file.write_text(f"MCP_DB_PATH={database}\nMCP_MAX_ROWS=2\n")
    done = fastmcp_install(
        "mcp-json", str(HERE / "server.py"), "--project", str(HERE), "--name", "shop",
        "--env-file", str(env_file), "--env", "MCP_QUERY_TIMEOUT_MS=4000", cwd=tmp_path,
    )  # fmt: skip
    entry = json.loads(done.stdout)["shop"]
    assert entry["env"] == {"MCP_DB_PATH": str(database), "MCP_MAX_ROWS": "2", "MCP_QUERY_TIMEOUT_MS": "4000"}
    served = await launch_entry(entry, cwd=tmp_path)
    assert served["rows"] == [["Ada"], ["Kofi"]]
    assert served["settings"]["max_rows"] == 2 and served["settings"]["query_timeout_ms"] == 4000


async def test_fastmcp_install_claude_desktop_writes_a_working_entry(tmp_path):
    needs("uv")
    database = shop_database(tmp_path / "shop.db")
    desktop = tmp_path / "Claude"  # Claude Desktop's configuration folder
    desktop.mkdir()
    (desktop / "claude_desktop_config.json").write_text(json.dumps({"mcpServers": {"other": {"command": "x"}}}))
    fastmcp_install(
        "claude-desktop", str(HERE / "server.py"), "--project", str(HERE), "--name", "shop",
        "--config-path", str(desktop), "--env", f"MCP_DB_PATH={database}", cwd=tmp_path,
    )  # fmt: skip
    servers = json.loads((desktop / "claude_desktop_config.json").read_text())["mcpServers"]
    assert set(servers) == {"other", "shop"}  # the user's other servers are kept
    served = await launch_entry(servers["shop"], cwd=tmp_path)
    assert served["rows"] == [["Ada"], ["Kofi"], ["Mei"]]


async def test_fastmcp_install_cursor_writes_a_working_workspace_entry(tmp_path):
    needs("uv")
    database = shop_database(tmp_path / "shop.db")
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    fastmcp_install(
        "cursor", str(HERE / "server.py"), "--project", str(HERE), "--name", "shop",
        "--workspace", str(workspace), "--env", f"MCP_DB_PATH={database}", "--env", "MCP_MAX_ROWS=1", cwd=tmp_path,
    )  # fmt: skip
    entry = json.loads((workspace / ".cursor" / "mcp.json").read_text())["mcpServers"]["shop"]
    served = await launch_entry(entry, cwd=workspace)
    assert served["rows"] == [["Ada"]] and served["settings"]["max_rows"] == 1


# --- The documentation's entries: they parse, and the ones a user copies launch ----------------------


def json_blocks(page: Path) -> list[Any]:
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)```", page.read_text(), re.DOTALL)]


def test_every_json_example_in_the_docs_parses():
    pages = [HERE / "README.md", *sorted((HERE / "docs").glob("*.md"))]
    parsed = {page.name: json_blocks(page) for page in pages}  # json.loads raises on a broken example
    assert parsed["README.md"] and parsed["install.md"]
    servers = json.loads((HERE / "claude_desktop_config.example.json").read_text())["mcpServers"]
    assert all(set(entry) <= {"command", "args", "env"} for entry in servers.values())


def with_this_checkout(entry: dict[str, Any], database: Path, files: Path) -> dict[str, Any]:
    """A documented entry with its placeholders filled in: this checkout's git URL, a real database and folder."""
    program = Path(entry["command"]).name.removesuffix(".exe")
    args = [arg.replace("git+<repository URL>", f"git+{HERE.resolve().as_uri()}") for arg in entry["args"]]
    env = {name: str(database) if name == "MCP_DB_PATH" else value for name, value in entry.get("env", {}).items()}
    if "MCP_FILES_ROOT" in env:
        env["MCP_FILES_ROOT"] = str(files)
    return {"command": needs(program), "args": args, "env": env}


@pytest.mark.parametrize("source", ["README.md", "claude_desktop_config.example.json"])
async def test_the_documented_uvx_entry_launches(tmp_path, source):
    if subprocess.run(["git", "-C", str(HERE), "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("this copy is not a git checkout: run the tests from a clone to try a git+file:// URL")
    if source == "README.md":
        blocks = json_blocks(HERE / source)
        entry = next(b["mcpServers"]["safe-data"] for b in blocks if "uvx" in json.dumps(b))
    else:
        entry = json.loads((HERE / source).read_text())["mcpServers"]["my-shop-data"]
    files = tmp_path / "exports"
    files.mkdir()
    filled = with_this_checkout(entry, shop_database(tmp_path / "shop.db"), files)
    served = await launched(filled["command"], filled["args"], clean_environment(**filled["env"]), cwd=tmp_path)
    assert served["rows"][:2] == [["Ada"], ["Kofi"]]
    assert served["settings"]["files_root"] == str(files)
