# A slim image running toolgate as a numeric non-root user.
#   docker build -t toolgate .
#   docker run -p 127.0.0.1:8080:8080 -e TOOLGATE_UPSTREAM_URL=https://api.openai.com/v1 \
#     -e TOOLGATE_UPSTREAM_API_KEY=sk-... -e TOOLGATE_API_KEYS=my-client-key toolgate
#   docker run -p 127.0.0.1:8080:8080 toolgate serve --demo     # the scripted demo model, on request only
FROM python:3.11-slim-trixie

# TOOLGATE_REQUIRE_UPSTREAM: without an upstream URL the container refuses to start
# (exit 2) instead of serving the demo model; `serve --demo` asks for the demo.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TOOLGATE_HOST=0.0.0.0 TOOLGATE_PORT=8080 TOOLGATE_CONFIG=/app/config/toolgate.toml \
    TOOLGATE_REQUIRE_UPSTREAM=1 TOOLGATE_STORE_URL=sqlite:////app/data/responses.db

WORKDIR /app
# tini as PID 1 reaps what stdio MCP servers leave orphaned and forwards SIGTERM.
# nodejs/npm (npx) and uv (uvx, from the lock below) run the stdio MCP servers READMEs start
# that way; they cache what they fetch under $HOME (/app/.npm, /app/.cache, /app/.local), the
# one directory a server's environment names (HOME is inherited, other variables are not).
# /app/data holds the Responses API's SQLite store (mount a volume there to keep it).
# Debian's versions are not pinned: the base image fixes the release, and its security
# updates replace the exact versions (.hadolint.yaml).
RUN apt-get update && apt-get install -y --no-install-recommends tini nodejs npm && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 toolgate \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app toolgate \
    && mkdir -p /app/data /app/.npm /app/.cache /app/.local && chown 10001:10001 /app/data /app/.npm /app/.cache /app/.local

# Every Python dependency pinned with its hashes (deploy/requirements.lock; the README says how
# to refresh it), then toolgate itself with nothing more fetched.
COPY deploy/requirements.lock ./deploy/requirements.lock
RUN pip install --require-hashes --no-deps -r deploy/requirements.lock
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip install --no-deps --no-build-isolation . && toolgate --version
# Mount your own config over this directory.
COPY config ./config

USER 10001:10001
EXPOSE 8080
# Follows TOOLGATE_PORT (exec form: Python reads the variable, no shell needed).
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('TOOLGATE_PORT', '8080')}/healthz\", timeout=2)"]
ENTRYPOINT ["tini", "--", "toolgate"]
CMD ["serve"]
