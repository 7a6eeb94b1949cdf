"""`toolgate serve` and `toolgate check`.

    toolgate serve                      # config/toolgate.toml; demo upstream if it names no URL
    toolgate serve --demo               # always the scripted demo upstream
    toolgate serve --workers 4 --host 0.0.0.0 --port 8080
    toolgate reload --pid-file PATH     # the gateway re-reads its config (SIGHUP); see gateway/reload.py
    toolgate check                      # validate, print the resolved config and the tools
    toolgate mcp import mcp.json        # an mcpServers JSON file as [tools.mcp.NAME] TOML
    toolgate init [PATH]                # write a commented starter config (never over a file)
    toolgate --version

A config with problems prints one line per problem and exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile

from importlib.resources import files

from typing import TYPE_CHECKING, Any

from gateway import __version__, logs
from gateway.config import DEFAULT_PATH, Settings, load_config
from gateway.errors import ConfigError
from gateway.reload import PID_FILE_ENV, NotFound, send_reload, write_pid_file
from gateway.server import Server, serve_workers, server_config

if TYPE_CHECKING:
    from starlette.applications import Starlette

log = logging.getLogger("toolgate")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
# How the supervisor hands `--log-level` to the workers it spawns.
WORKER_LOG_LEVEL = "TOOLGATE_WORKER_LOG_LEVEL"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="toolgate", description="An OpenAI-compatible gateway that runs the tool loop.")
    parser.add_argument("--version", action="version", version=f"toolgate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="write a commented starter config", description="Write a commented starter config; an existing file is never overwritten.")
    init.add_argument("path", nargs="?", default=DEFAULT_PATH, help=f"where (default {DEFAULT_PATH}, where serve and check look)")
    serve = sub.add_parser("serve", help="run the gateway")
    check = sub.add_parser("check", help="validate the config and list the tools")
    for p in (serve, check):
        p.add_argument("--config", help="TOML file (default: $TOOLGATE_CONFIG or config/toolgate.toml)")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8080)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes")
    serve.add_argument("--demo", action="store_true", help="serve the built-in demo model instead of a real upstream")
    serve.add_argument("--log-level", default="info")
    serve.add_argument("--pid-file", default=os.environ.get(PID_FILE_ENV), help=f"write the process id here, for `toolgate reload` (or ${PID_FILE_ENV})")
    reload = sub.add_parser("reload", help="make the running gateway re-read its config (sends it SIGHUP)")
    reload.add_argument("--pid-file", default=os.environ.get(PID_FILE_ENV), help=f"the file `serve --pid-file` wrote (or ${PID_FILE_ENV})")
    reload.add_argument("--pid", type=int, help="the gateway's process id (the supervisor's, with --workers)")
    mcp = sub.add_parser("mcp", help="MCP server configs").add_subparsers(dest="mcp_command", required=True)
    mcp_import = mcp.add_parser(
        "import",
        help="print an mcpServers JSON file as [tools.mcp.NAME] TOML",
        description="Print the [tools.mcp.NAME] tables equivalent to an mcpServers JSON file (Claude Desktop, "
        "Cursor; VS Code's \"servers\"). Values are printed as they are in the file: secrets written there "
        "appear in the output, and ${VAR} references stay references, expanded when the gateway connects. "
        "`[tools.mcp] import = \"FILE\"` in the config reads the file directly instead.",
    )
    mcp_import.add_argument("file", help="the JSON file")
    return parser


def _load(path: str | None) -> Settings:
    try:
        return load_config(path, os.environ)
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        raise SystemExit(2) from None


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    logs.setup(args.log_level.upper() if args.command == "serve" else "WARNING")
    if args.command == "check":
        raise SystemExit(asyncio.run(_check(_load(args.config))))
    if args.command == "reload":
        raise SystemExit(_reload(args))
    if args.command == "mcp":
        raise SystemExit(_mcp_import(args.file))
    if args.command == "init":
        raise SystemExit(_init(args.path))
    _serve(args)


def _init(path: str) -> int:
    """Write the starter config (the one this repository ships as config/toolgate.toml)."""
    starter = files("gateway").joinpath("starter.toml").read_bytes()
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "xb") as f:
            f.write(starter)
    except FileExistsError:
        print(f"{path}: already exists; not overwritten (name another path, or remove it first)", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    flag = "" if path == DEFAULT_PATH else f" --config {path}"
    print(f"wrote {path}\ncheck it:  toolgate check{flag}\nstart it:  toolgate serve{flag}   (the demo model until TOOLGATE_UPSTREAM_URL is set)")
    return 0


def _mcp_import(path: str) -> int:
    from gateway.tools.mcp import import_toml

    try:
        print(import_toml(path), end="")
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return 2
    return 0


def _reload(args: argparse.Namespace) -> int:
    try:
        pid = send_reload(pid_file=args.pid_file, pid=args.pid)
    except NotFound as exc:
        print(f"toolgate reload: {exc}", file=sys.stderr)
        return 1
    print(f"sent SIGHUP to the gateway (pid {pid}); its log and /readyz (config.last_reload) tell the outcome")
    return 0


async def _check(settings: Settings) -> int:
    from gateway.app import create_app

    print(json.dumps(settings.describe(), indent=2))
    for line in settings.warnings:
        print(f"warning: {line}")
    app = create_app(settings)
    failed = 0
    async with app.router.lifespan_context(app):
        runtime = app.state.runtime
        await runtime.starting
        owners = runtime.toolbox.owners()
        print("\ntools:")
        for source in runtime.toolbox.sources:
            status = source.status()
            names = sorted(name for name, owner in owners.items() if owner == source.name)
            print(f"  {source.name}: {', '.join(names) or '(none)'}")
            if not status.ready:
                failed += 1
                print(f"  problem: {source.name}: {status.detail}")
        for alias in settings.models.values():
            offered = runtime.toolbox.select(alias.tools).tools
            print(f"model {alias.name} -> {alias.upstream}/{alias.upstream_model}: {', '.join(offered) or '(no tools)'}")
    return 1 if failed else 0


def _serve(args: argparse.Namespace) -> None:
    settings = _load(args.config)
    for line in settings.warnings:
        log.warning("config: %s", line)
    server = settings.server
    host = args.host or server.host
    port = args.port or server.port
    default = settings.upstreams[server.default_upstream]
    demo = args.demo or not default.url
    if demo and not args.demo and os.environ.get("TOOLGATE_REQUIRE_UPSTREAM", "") not in ("", "0"):
        # Set in the container image: a deployment without an upstream is a mistake, not a demo.
        print(
            f"{settings.path}: upstreams.{server.default_upstream}.url: no upstream URL is set; "
            "set TOOLGATE_UPSTREAM_URL, or run `toolgate serve --demo` for the scripted demo model",
            file=sys.stderr,
        )
        raise SystemExit(2)
    if not settings.api_keys:
        if host not in LOOPBACK and not args.host and "TOOLGATE_HOST" not in os.environ:
            log.warning("no API keys: binding 127.0.0.1, not %s from the config; say --host to insist", host)
            host = "127.0.0.1"
        where = "anyone on this machine" if host in LOOPBACK else f"anyone who can reach {host}"
        log.warning("no API keys (TOOLGATE_API_KEYS): %s can use this gateway and its upstream keys", where)
    options = dict(host=host, port=port)
    if demo and args.workers > 1:
        log.warning("the demo upstream runs in one process: ignoring --workers %d", args.workers)
        args.workers = 1
    if args.pid_file:
        try:
            write_pid_file(args.pid_file)
        except OSError as exc:
            print(f"{args.pid_file}: cannot write the pid file ({exc.strerror or type(exc).__name__})", file=sys.stderr)
            raise SystemExit(2) from None
    log.info("serving on http://%s:%d/v1 (%d worker%s)", host, port, args.workers, "s" * (args.workers > 1))
    if demo:
        asyncio.run(_serve_demo(settings, options))
    elif args.workers > 1:
        # Each worker loads the config itself; metrics are summed over them.
        if args.config:
            os.environ["TOOLGATE_CONFIG"] = args.config
        os.environ[WORKER_LOG_LEVEL] = args.log_level.upper()
        with tempfile.TemporaryDirectory(prefix="toolgate-metrics-") as metrics_dir:
            os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", metrics_dir)
            config = server_config("gateway.cli:worker_app", settings, factory=True, **options)
            serve_workers(config, args.workers, server.grace_s)
    else:
        from gateway.app import create_app

        Server(server_config(create_app(settings), settings, **options), grace_s=server.grace_s).run()


def worker_app() -> Starlette:
    from gateway.app import create_app

    logs.setup(os.environ.get(WORKER_LOG_LEVEL, "INFO"))
    return create_app(_load(None))


async def _serve_demo(settings: Settings, options: dict[str, Any]) -> None:
    from gateway import demo
    from gateway.app import create_app

    settings = demo.settings(settings)
    log.warning(
        "DEMO MODE: no upstream URL is set, so upstream %r is the built-in demo model (gateway/demo.py, in this "
        "process), not a real one; /readyz says \"demo\": true. Set TOOLGATE_UPSTREAM_URL to use a real host.",
        settings.server.default_upstream,
    )
    app = create_app(settings, demo=True)
    await Server(server_config(app, settings, **options), grace_s=settings.server.grace_s).serve()
