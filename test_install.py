"""Tests for the ways a user installs this server: each launches the server the way that installer
would (its command, arguments and environment, from a folder of its own) and talks to it over stdio
with FastMCP's own client."""

from __future__ import annotations

import fnmatch
import http.client
import json
import os
import re
import secrets
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tomllib
import typing
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from fastmcp import Client
from fastmcp.client.transports import StdioTransport, StreamableHttpTransport
from pydantic import SecretStr

from test_server import free_port, listening

# Installers fetch packages (from uv's cache when it is warm): slow on a loaded machine with a cold cache.
pytestmark = pytest.mark.timeout(600)

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


def needs_a_git_checkout() -> None:
    """Skip, saying why, where this copy is not a git checkout (a git+file:// URL needs one)."""
    if subprocess.run([needs("git"), "-C", str(HERE), "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("this copy is not a git checkout: run the tests from a clone to try a git+file:// URL")


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
    run_only = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "UV_PROJECT_ENVIRONMENT", "DATABASE_URL")
    machine = {k: v for k, v in os.environ.items() if not k.startswith("MCP_") and k not in run_only}
    machine["UV_PYTHON_DOWNLOADS"] = "never"  # a Python from GitHub: not reachable in CI, and not needed
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


def installed(mcpb: list[str], bundle: Path, folder: Path) -> Path:
    """Unpack the bundle into a folder of its own, as Claude Desktop does when a user installs it, with the
    official CLI's unpack (the same library's code)."""
    unpacked = run_mcpb(mcpb, "unpack", str(bundle), str(folder))
    assert unpacked.returncode == 0 and (folder / "manifest.json").is_file(), unpacked.stdout + unpacked.stderr
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


async def test_the_installed_bundle_serves_the_users_settings(mcpb, bundle, tmp_path):
    folder = installed(mcpb, bundle, tmp_path / "Claude Extensions" / "safe-data-mcp")
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


async def test_the_installed_bundle_left_blank_serves_the_demo(mcpb, bundle, tmp_path):
    folder = installed(mcpb, bundle, tmp_path / "Claude Extensions" / "safe-data-mcp")
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


async def test_uvx_serves_a_checkouts_edited_server_py(tmp_path):
    # uv rebuilds a local checkout only when one of its cache keys changes (pyproject.toml's [tool.uv]):
    # without server.py among them, a `git pull` would go on serving the old server.py from the cache.
    uvx = needs("uvx")
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for name in ("pyproject.toml", "uv.lock", "README.md", "server.py"):
        shutil.copy2(HERE / name, checkout / name)

    async def version() -> str:
        transport = StdioTransport(uvx, ["--from", str(checkout), "safe-data-mcp"], clean_environment(), str(tmp_path))
        async with Client(transport, timeout=120) as client:
            return client.server_info.version

    first = await version()
    server_py = checkout / "server.py"
    server_py.write_text(server_py.read_text().replace(f'SERVER_VERSION = "{first}"', 'SERVER_VERSION = "0-edited"'))
    assert first == tomllib.loads((HERE / "pyproject.toml").read_text())["project"]["version"]
    assert await version() == "0-edited"


async def test_uvx_runs_a_git_url(tmp_path):
    uvx = needs("uvx")
    needs_a_git_checkout()
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
    needs_a_git_checkout()
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


# --- Registry entry: server.json for the official MCP registry, and the Dockerfile -------------------

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


def test_the_readme_proves_the_pypi_package_is_this_servers():
    """The registry accepts a PyPI package only if its description, the README here, holds
    `mcp-name: NAME` with server.json's name, followed by a space, a newline or the comment's end."""
    name = json.loads(SERVER_JSON.read_text())["name"]
    assert pyproject()["project"]["readme"] == "README.md"
    assert re.search(rf"mcp-name: {re.escape(name)}(?=\s|<|$)", (HERE / "README.md").read_text()), (
        f"README.md needs the line <!-- mcp-name: {name} --> for the registry's ownership check"
    )


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions, as (KEYWORD, arguments) in each build stage: comments dropped,
    continued lines joined (the ARG before the first FROM belongs to no stage)."""
    stages: list[list[tuple[str, str]]] = []
    instruction = ""
    for line in (HERE / "Dockerfile").read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        instruction += line.removesuffix("\\") + " "
        if line.endswith("\\") or not instruction.strip():
            continue
        keyword, _, arguments = instruction.strip().partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword.upper(), arguments.strip()))
        instruction = ""
    return stages


def image_settings(stage: list[tuple[str, str]]) -> dict[str, str]:
    """A stage's ENV, every `NAME=value` of every ENV line."""
    return dict(
        pair.partition("=")[::2] for keyword, arguments in stage if keyword == "ENV" for pair in shlex.split(arguments)
    )


def image_command() -> list[str]:
    """What the image runs: its ENTRYPOINT, then its CMD (both in exec form)."""
    final = dockerfile_stages()[-1]
    command = [json.loads(arguments) for keyword, arguments in final if keyword in ("ENTRYPOINT", "CMD")]
    return [part for parts in command for part in parts]


def test_server_json_docker_label_and_pyproject_name_one_server():
    """The names a maintainer must change before publishing (OWNER) stay one name: the registry's,
    the repository's owner, and the image's label the registry checks an OCI image by."""
    entry = json.loads(SERVER_JSON.read_text())
    owner, slash, server = entry["name"].removeprefix("io.github.").partition("/")
    assert entry["name"].startswith("io.github.") and slash and server == pyproject()["project"]["name"]
    assert entry["repository"] == {"url": f"https://github.com/{owner}/{server}", "source": "github"}
    labels = dict(
        pair.partition("=")[::2] for keyword, arguments in dockerfile_stages()[-1] if keyword == "LABEL"
        for pair in shlex.split(arguments)
    )  # fmt: skip
    assert labels["io.modelcontextprotocol.server.name"] == entry["name"]


def test_the_image_runs_as_a_user_other_than_root_and_exposes_its_port():
    final = dockerfile_stages()[-1]
    users = [arguments.partition(":")[0] for keyword, arguments in final if keyword == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image would run the server as root"
    command = image_command()
    assert [arguments for keyword, arguments in final if keyword == "EXPOSE"] == [command[command.index("--port") + 1]]


def image_launch(program: list[str], port: int, **settings: str) -> tuple[list[str], dict[str, str]]:
    """The image's command, its program given, as `docker run IMAGE --port PORT` runs it (argparse
    keeps the last --port), with the image's ENV and the settings a user passes with -e. The PATH
    is this machine's: the image's only puts its venv first."""
    command = image_command()
    image_env = {name: value for name, value in image_settings(dockerfile_stages()[-1]).items() if name != "PATH"}
    return [*program, *command[1:], "--port", str(port)], clean_environment(**image_env, **settings)


def checkout_program() -> list[str]:
    """This checkout's server.py, standing in for the console script the image's command names."""
    assert pyproject()["project"]["scripts"][image_command()[0]] == "server:main"
    return [PYTHON, str(HERE / "server.py")]


def test_the_image_refuses_to_start_without_a_token(tmp_path):
    database = shop_database(tmp_path / "shop.db")
    command, env = image_launch(checkout_program(), free_port(), MCP_DB_PATH=str(database))
    host = command[command.index("--host") + 1]
    assert host == "0.0.0.0", "in a container the server must listen on all interfaces to be reached"
    done = subprocess.run(
        command, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    assert f"refusing to listen on {host} without MCP_AUTH_TOKEN" in done.stderr
    assert done.stdout == ""


def unauthorized_status(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/mcp", body="{}", headers={"Accept": "application/json, text/event-stream"})
        return conn.getresponse().status
    finally:
        conn.close()


async def serves_with_a_token(program: list[str], tmp_path: Path) -> None:
    """The image's command with a token and a user's database: a request without the token is turned
    away, a client with it lists the tools, queries the database and sees the settings."""
    token, port = secrets.token_hex(32), free_port()
    database = shop_database(tmp_path / "shop.db")
    command, env = image_launch(program, port, MCP_AUTH_TOKEN=token, MCP_DB_PATH=str(database), MCP_MAX_ROWS="2")
    with listening(command, env, cwd=tmp_path, logs=tmp_path / "logs", port=port, start_s=120):
        assert unauthorized_status(port) == 401
        async with Client(StreamableHttpTransport(f"http://127.0.0.1:{port}/mcp", auth=token), timeout=120) as client:
            tools = {tool.name for tool in await client.list_tools()}
            result = await client.call_tool("query_database", {"query": "SELECT name FROM customers ORDER BY id"})
            settings = json.loads((await client.read_resource("config://app/settings"))[0].text)
    assert "query_database" in tools and result.structured_content["rows"] == [["Ada"], ["Kofi"]]
    assert settings["max_rows"] == 2


async def test_the_image_with_a_token_serves_http(tmp_path):
    await serves_with_a_token(checkout_program(), tmp_path)


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory) -> Path:
    """The build stage's steps, run here without Docker: each COPY takes its files from what
    .dockerignore lets into the build, each `uv sync` runs with the stage's ENV into a venv of its own."""
    uv = needs("uv")
    build = dockerfile_stages()[0]
    root = tmp_path_factory.mktemp("image")
    venv, workdir = root / "venv", root / "src"
    workdir.mkdir()
    rules = [line.strip() for line in (HERE / ".dockerignore").read_text().splitlines()]
    rules = [rule for rule in rules if rule and not rule.startswith("#")]

    def sent(name: str) -> bool:
        kept = True
        for rule in rules:  # the last rule that matches decides
            if fnmatch.fnmatch(name, rule.removeprefix("!")):
                kept = rule.startswith("!")
        return kept

    assert not any(sent(name) for name in (".env", ".venv", ".git", "shop.db")), "secrets or state in the build"
    # the machine's environment, as a build has its host's network (its certificates, any index mirror)
    env = clean_environment() | image_settings(build) | {"UV_PROJECT_ENVIRONMENT": str(venv), "UV_PYTHON": PYTHON}
    syncs = 0
    for keyword, arguments in build:
        if keyword == "COPY":
            *sources, destination = shlex.split(arguments)
            assert destination == "./"
            for source in sources:
                assert sent(source) and (HERE / source).is_file(), f"the build's COPY needs {source}"
                shutil.copy2(HERE / source, workdir)
        elif keyword == "RUN" and arguments.startswith("uv sync"):
            done = subprocess.run(
                [uv, *shlex.split(arguments)[1:]], cwd=workdir, env=env,
                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr[-3000:]
            syncs += 1
    assert syncs == 2, "the build installs the dependencies, then the project"
    return venv


def test_the_image_venv_holds_the_server_and_the_postgres_driver_and_no_dev_tools(image_venv):
    python = image_venv / "bin" / "python"
    (site,) = image_venv.glob("lib/python3.*/site-packages")
    assert (site / "server.py").is_file(), "non-editable: the venv has its own copy of server.py"
    build_folder = str(image_venv.parent / "src")
    assert not any(build_folder in pth.read_text() for pth in site.glob("*.pth")), "editable: it points at /src"
    for module, present in (("psycopg", True), ("fastmcp", True), ("pytest", False), ("ruff", False)):
        found = subprocess.run([python, "-c", f"import {module}"], capture_output=True, timeout=120).returncode == 0
        assert found == present, f"{module} {'missing from' if present else 'should not be in'} the image"
    path = image_settings(dockerfile_stages()[-1])["PATH"]
    assert path.startswith(image_settings(dockerfile_stages()[0])["UV_PROJECT_ENVIRONMENT"] + "/bin:")


async def test_the_image_venv_serves_http_with_a_token(image_venv, tmp_path):
    await serves_with_a_token([str(image_venv / "bin" / image_command()[0])], tmp_path)


@pytest.mark.timeout(1800)
def test_the_image_builds_and_refuses_to_start_without_a_token():
    docker = needs("docker")
    if subprocess.run([docker, "info"], capture_output=True, timeout=60).returncode != 0:
        pytest.skip(
            "no Docker daemon: run `docker build -t safe-data-mcp .` where one is"
            " (CI has the docker client but no daemon, so this skips there too)"
        )
    tag = "safe-data-mcp:test"
    built = subprocess.run([docker, "build", "-t", tag, str(HERE)], capture_output=True, text=True, timeout=1700)
    assert built.returncode == 0, built.stderr[-3000:]
    user = subprocess.run(
        [docker, "run", "--rm", "--entrypoint", "id", tag, "-u"], capture_output=True, text=True, timeout=120
    )
    assert user.stdout.strip() not in ("", "0")
    refused = subprocess.run([docker, "run", "--rm", tag], capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "refusing to listen on 0.0.0.0 without MCP_AUTH_TOKEN" in refused.stderr
