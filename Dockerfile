# A slim image running toolgate as a non-root user.
#   docker build -t toolgate .
#   docker run -p 8080:8080 -e TOOLGATE_UPSTREAM_URL=https://api.openai.com/v1 \
#     -e TOOLGATE_UPSTREAM_API_KEY=sk-... -e TOOLGATE_API_KEYS=my-client-key toolgate
FROM python:3.11-slim

# TOOLGATE_REQUIRE_UPSTREAM: without an upstream URL the container refuses to start
# (exit 2) instead of serving the demo model; `serve --demo` asks for the demo.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    TOOLGATE_HOST=0.0.0.0 TOOLGATE_PORT=8080 TOOLGATE_CONFIG=/app/config/toolgate.toml \
    TOOLGATE_REQUIRE_UPSTREAM=1 TOOLGATE_STORE_URL=sqlite:////app/data/responses.db

WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
# tini as PID 1 reaps what stdio MCP servers leave orphaned and forwards SIGTERM.
# nodejs/npm (npx) and uv (uvx) run the stdio MCP servers READMEs start that way; they cache
# what they fetch under $HOME (/app/.npm, /app/.cache, /app/.local), the one directory a
# server's environment names (HOME is inherited, other variables are not).
# /app/data holds the Responses API's SQLite store (mount a volume there to keep it).
RUN apt-get update && apt-get install -y --no-install-recommends tini nodejs npm && rm -rf /var/lib/apt/lists/* \
    && pip install . uv && useradd --system --uid 10001 --home-dir /app toolgate \
    && mkdir -p /app/data /app/.npm /app/.cache /app/.local && chown 10001 /app/data /app/.npm /app/.cache /app/.local
# Mount your own config over this directory.
COPY config ./config

USER 10001
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s \
    CMD python -c "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('TOOLGATE_PORT', '8080')}/healthz\", timeout=2)"
ENTRYPOINT ["tini", "--", "toolgate"]
CMD ["serve"]
