"""How long a user waits for the server's first answer on each install path: from launching the
command an installer writes to the answer of `list_tables`, with uv's cache empty (the first start
on a new machine, downloads included) and then warm (every later start).

    uv run python benchmarks/first_start.py             # about two minutes; needs npx for the bundle

Each path runs from a scratch folder, with a uv cache of its own, and serves the built-in demo.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fastmcp import Client
from fastmcp.client.transports import StdioTransport

HERE = Path(__file__).resolve().parent.parent


def environment(cache: Path) -> dict[str, str]:
    """The machine's environment without this checkout's venv or settings, and a uv cache of its own."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONDONTWRITEBYTECODE")}
    env = {k: v for k, v in env.items() if not k.startswith("MCP_")}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if not p.startswith(str(HERE / ".venv")))
    return env | {"UV_CACHE_DIR": str(cache), "UV_PYTHON": f"{sys.version_info.major}.{sys.version_info.minor}"}


async def first_answer(command: str, args: list[str], env: dict[str, str], cwd: Path) -> float:
    started = time.perf_counter()
    async with Client(StdioTransport(command, args, env=env, cwd=str(cwd)), timeout=600) as client:
        await client.call_tool("list_tables", {})
    return time.perf_counter() - started


def bundle_folder(scratch: Path) -> tuple[str, list[str]]:
    """Pack the bundle, unpack it as Desktop does, and return the manifest's command for the demo."""
    packed, folder = scratch / "safe-data-mcp.mcpb", scratch / "Claude Extensions" / "safe-data-mcp"
    cli = ["npx", "-y", "@anthropic-ai/mcpb@2.1.2"]
    subprocess.run([*cli, "pack", str(HERE), str(packed)], check=True, capture_output=True)
    subprocess.run([*cli, "unpack", str(packed), str(folder)], check=True, capture_output=True)
    config = json.loads((folder / "manifest.json").read_text())["server"]["mcp_config"]
    return config["command"], [arg.replace("${__dirname}", str(folder)) for arg in config["args"]]


async def main() -> None:
    git_url = f"git+{HERE.as_uri()}"
    print(f"{'path':<38} {'cold cache':>11} {'warm':>8}")
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        checkout = scratch / "checkout"  # a fresh copy: no .venv yet, as after `git clone`
        checkout.mkdir()
        for name in ("pyproject.toml", "uv.lock", "README.md", "server.py"):
            shutil.copy2(HERE / name, checkout / name)
        paths = {
            "uvx --from git+URL safe-data-mcp": ("uvx", ["--from", git_url, "safe-data-mcp"]),
            "uvx --from CHECKOUT safe-data-mcp": ("uvx", ["--from", str(checkout), "safe-data-mcp"]),
            "uv --directory CHECKOUT run server.py": ("uv", ["--directory", str(checkout), "run", "server.py"]),
        }
        if shutil.which("npx"):
            paths["Claude Desktop bundle (uv run)"] = bundle_folder(scratch)
        for number, (name, (command, args)) in enumerate(paths.items()):
            env = environment(scratch / f"cache-{number}")
            cold = await first_answer(command, args, env, scratch)
            warm = await first_answer(command, args, env, scratch)
            print(f"{name:<38} {cold:>9.1f} s {warm:>6.1f} s", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
