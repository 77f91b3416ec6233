# The server over streamable HTTP, for a deployment that clients reach over the network.
#
#   docker build -t safe-data-mcp .
#   export MCP_AUTH_TOKEN=$(openssl rand -hex 32)
#   docker run --rm -p 127.0.0.1:8000:8000 -e MCP_AUTH_TOKEN -v "$PWD/data:/data:ro" \
#       -e MCP_DB_PATH=/data/shop.db -e MCP_FILES_ROOT=/data safe-data-mcp
#
# Inside the container it listens on 0.0.0.0, which the server refuses without MCP_AUTH_TOKEN: a run
# without one stops at once and says so. Clients send `Authorization: Bearer <token>` to /mcp.
# Arguments after the image name are added to the command: `--stateless`, or `--port 9000`.
# One image serves SQLite and PostgreSQL (MCP_DATABASE_URL): the postgres extra is installed.
# A SQLite database in WAL mode cannot be opened from a read-only mount (SQLite needs to create its
# -shm file beside it): mount its folder without :ro, writable by uid 10001, or switch the database
# to PRAGMA journal_mode=DELETE.

ARG PYTHON_IMAGE=python:3.11-slim

# --- Build: the locked dependencies, then the project, into /app/.venv --------------------------
FROM ${PYTHON_IMAGE} AS build
# uv from PyPI, so that the build needs nothing but the base image and PyPI
RUN pip install --no-cache-dir --root-user-action=ignore uv==0.13.9
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src
COPY pyproject.toml uv.lock ./
# dependencies first, in their own layer: a change to server.py alone does not download them again
RUN uv sync --locked --no-dev --extra postgres --no-install-project
COPY README.md server.py ./
# non-editable: the venv holds its own copy of server.py, and /src is not in the final image
RUN uv sync --locked --no-dev --extra postgres --no-editable

# --- Run: the venv on a clean base, as a user who owns nothing in it -----------------------------
FROM ${PYTHON_IMAGE}
# numeric, so that a runtime which checks runAsNonRoot can see it is not root; a home for the demo's files
RUN groupadd --gid 10001 app && useradd --uid 10001 --gid app --create-home app && mkdir /data
COPY --from=build /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH PYTHONUNBUFFERED=1
# the official MCP registry's proof that an OCI image belongs to this server.json name
LABEL io.modelcontextprotocol.server.name="io.github.OWNER/safe-data-mcp"
USER 10001:10001
WORKDIR /home/app
# /data is where to mount your database and JSON files, read-only (the server only reads). Nothing
# needs to persist, so no VOLUME is declared: it would only leave an empty anonymous volume per run.
EXPOSE 8000
ENTRYPOINT ["safe-data-mcp", "--transport", "http", "--host", "0.0.0.0", "--port", "8000"]
