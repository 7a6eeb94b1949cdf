"""Config reload without a restart: a real uvicorn on 127.0.0.1, the scripted fake LLM, real MCP
servers as subprocesses; `toolgate reload` and SIGHUP against a real gateway process."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import httpx
import openai
import pytest
from gateway import reload
from gateway.app import create_app
from gateway.config import load_config
from tests.fakellm import Calls, FakeLLM, Reply
from gateway.server import Server, server_config

ROOT = Path(__file__).resolve().parent.parent
MCP_SERVER = str(Path(__file__).with_name("mcp_server.py"))


class _Gate:
    """What `hold` (offered as a tool by the configs below) waits on."""

    def reset(self) -> None:
        self.holding = asyncio.Event()
        self.release = asyncio.Event()


GATE = _Gate()


async def hold() -> str:
    """Wait until the test lets go."""
    GATE.holding.set()
    await asyncio.wait_for(GATE.release.wait(), 20)
    return "held"


def config_text(upstream: str, *, model: str = "m", upstream_model: str = "old-model", tools: str = '["hold", "calculate"]', extra: str = "") -> str:
    return textwrap.dedent(
        f"""
        [server]
        request_timeout_s = 60
        [upstreams.default]
        url = "{upstream}"
        retries = 0
        [tools.builtin.calculate]
        [tools.python.gate]
        functions = ["tests.test_reload:hold"]
        """
    ) + extra + textwrap.dedent(
        f"""
        [[models]]
        name = "{model}"
        upstream_model = "{upstream_model}"
        tools = {tools}
        """
    )


def _mcp(name: str) -> str:
    return textwrap.dedent(
        f"""
        [tools.mcp.{name}]
        command = {sys.executable!r}
        args = [{MCP_SERVER!r}, "--transport", "stdio"]
        prefix = true
        startup_timeout_s = 20
        """
    )


@asynccontextmanager
async def serve(path: Path):
    """The gateway for the config file at `path` on a pre-bound loopback socket; yields (base URL, app)."""
    settings = load_config(path, {})
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    app = create_app(settings)
    server = Server(server_config(app, settings, lifespan="on"), grace_s=2)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(30):
            while not server.started:
                assert not task.done(), "the server did not start"
                await asyncio.sleep(0.005)
            await app.state.runtime.starting
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", app
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)
        sock.close()


def sdk(base: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=30)


def chats(fake: FakeLLM) -> list[dict]:
    """The bodies of the chat requests that reached the fake (not the gateway's reachability probes)."""
    return [r.body for r in fake.requests if r.method == "POST"]


def offered(body: dict) -> list[str]:
    return sorted(t["function"]["name"] for t in body.get("tools", []))


async def test_a_changed_alias_serves_new_requests_while_a_request_in_flight_finishes_on_the_old_one(tmp_path):
    GATE.reset()

    def brain(body):
        if body["model"] == "new-model":
            return Reply("fresh")
        if body["messages"][-1]["role"] == "tool":
            return Reply("answered on the old config", chunk_delay_s=0.01)
        return Calls([("hold", {})])

    path = tmp_path / "toolgate.toml"
    async with FakeLLM() as fake:
        fake.push(brain, brain, brain)
        path.write_text(config_text(fake.url))
        async with serve(path) as (base, app), sdk(base) as client:

            async def in_flight() -> str:
                stream = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "go"}], stream=True)
                return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

            old = asyncio.create_task(in_flight())
            await asyncio.wait_for(GATE.holding.wait(), 10)  # round 1 done, its tool running
            path.write_text(config_text(fake.url, upstream_model="new-model", tools='["calculate"]'))
            outcome = await asyncio.wait_for(app.state.reloader.reload(), 30)
            fresh = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
            GATE.release.set()
            text = await asyncio.wait_for(old, 20)
            async with httpx.AsyncClient(base_url=base) as http:
                ready = (await http.get("/readyz")).json()
                metrics = (await http.get("/metrics")).text
    assert outcome["outcome"] == "applied"
    assert fresh.choices[0].message.content == "fresh"
    assert text == "answered on the old config"
    models = [(body["model"], offered(body)) for body in chats(fake)]
    # Both rounds of the request in flight went out on the old alias, the new request on the new one.
    assert models == [("old-model", ["calculate", "hold"]), ("new-model", ["calculate"]), ("old-model", ["calculate", "hold"])]
    assert chats(fake)[2]["messages"][-1]["content"] == "held"
    assert ready["status"] == "ready"
    assert ready["config"]["generation"] == 2
    assert ready["config"]["last_reload"]["outcome"] == "applied"
    assert "toolgate_config_generation 2.0" in metrics
    assert 'toolgate_config_reloads_total{outcome="applied"}' in metrics


async def test_a_request_whose_body_is_still_arriving_is_served_on_the_config_it_began_on(tmp_path):
    path = tmp_path / "toolgate.toml"
    async with FakeLLM() as fake:
        fake.push(*[lambda body: Reply(f"from {body['model']}")] * 2)
        path.write_text(config_text(fake.url))
        async with serve(path) as (base, app), httpx.AsyncClient(base_url=base, timeout=30) as http:
            body = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
            halfway = asyncio.Event()
            go_on = asyncio.Event()

            async def slowly():
                yield body[:10]
                halfway.set()
                await go_on.wait()
                yield body[10:]

            began = asyncio.create_task(http.post("/v1/chat/completions", content=slowly(), headers={"content-type": "application/json"}))
            await asyncio.wait_for(halfway.wait(), 10)
            await _until(lambda: app.state.runtime.current.users == 1)  # the gateway is reading its body
            path.write_text(config_text(fake.url, upstream_model="new-model"))
            await asyncio.wait_for(app.state.reloader.reload(), 30)
            later = await http.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
            go_on.set()
            first = await asyncio.wait_for(began, 10)
    assert first.status_code == 200 and first.json()["choices"][0]["message"]["content"] == "from old-model"
    assert later.status_code == 200 and later.json()["choices"][0]["message"]["content"] == "from new-model"


async def test_no_request_fails_across_reloads(tmp_path):
    path = tmp_path / "toolgate.toml"
    async with FakeLLM() as fake:  # nothing scripted: the demo brain answers every request
        path.write_text(config_text(fake.url))
        async with serve(path) as (base, app), httpx.AsyncClient(base_url=base, timeout=30) as http:

            async def ask(i: int, stream: bool) -> int:
                body = {"model": "m", "messages": [{"role": "user", "content": f"what is {i}+1?"}], "stream": stream}
                async with http.stream("POST", "/v1/chat/completions", json=body) as r:
                    text = (await r.aread()).decode()
                assert r.status_code == 200 and ("[DONE]" in text if stream else str(i + 1) in text), text
                return r.status_code

            async def reloads() -> list[str]:
                outcomes = []
                for n in range(3):
                    path.write_text(config_text(fake.url, upstream_model=f"model-{n}"))
                    outcomes.append((await app.state.reloader.reload())["outcome"])
                return outcomes

            results = await asyncio.wait_for(
                asyncio.gather(reloads(), *(ask(i, i % 2 == 0) for i in range(40))), 60
            )
    assert results[0] == ["applied"] * 3
    assert results[1:] == [200] * 40
    assert {body["model"] for body in chats(fake)} <= {"old-model", "model-0", "model-1", "model-2"}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:  # gone, or gone between open and read (ESRCH)
        return False


async def _until(predicate, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)


def _tool_results(body: dict) -> list[str]:
    return [m["content"] for m in body["messages"] if m["role"] == "tool"]


async def test_mcp_servers_added_removed_changed_and_kept(tmp_path):
    path = tmp_path / "toolgate.toml"
    async with FakeLLM() as fake:
        path.write_text(config_text(fake.url, tools='["a_*", "b_*", "d_*"]', extra=_mcp("a") + _mcp("b") + _mcp("d")))
        async with serve(path) as (base, app), sdk(base) as client:
            fake.push(Calls([("a_pid", {}), ("b_pid", {}), ("d_pid", {})]), Reply("pids"))
            await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "pids?"}])
            a_pid, b_pid, d_pid = map(int, _tool_results(chats(fake)[1]))
            assert all(map(_alive, (a_pid, b_pid, d_pid)))

            # A call on `a` is running when `a` is removed: it finishes, then `a` stops.
            fake.push(Calls([("a_sleep", {"seconds": 4})]), Reply("slept"))
            sleeping = asyncio.create_task(client.chat.completions.create(model="m", messages=[{"role": "user", "content": "sleep"}]))
            tools = app.state.runtime.toolbox.all_tools()
            await _until(lambda: len(chats(fake)) == 3)
            async with asyncio.timeout(10):
                while await tools["a_active"].call({}) != "1":
                    await asyncio.sleep(0.05)
            # `b` as it was; `d` with another timeout (a changed table); `c` new, with a secret in its env.
            changed_d = _mcp("d") + "timeout_s = 29\n"
            new_c = _mcp("c") + 'env = { API_TOKEN = "c-token-0123456789" }\n'
            path.write_text(config_text(fake.url, tools='["b_*", "c_*", "d_*"]', extra=_mcp("b") + new_c + changed_d))
            outcome = await asyncio.wait_for(app.state.reloader.reload(), 60)
            if not sleeping.done():  # (a slow machine may take longer to start `c` and `d` than the sleep lasts)
                assert _alive(a_pid), "the removed server was stopped under a call in flight"
            slept = await asyncio.wait_for(sleeping, 20)
            await _until(lambda: not _alive(a_pid) and not _alive(d_pid))

            fake.push(Calls([("b_pid", {}), ("c_pid", {}), ("d_pid", {}), ("c_env", {"name": "API_TOKEN"})]), Reply("pids again"))
            await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "pids?"}])
            *after, token = _tool_results(chats(fake)[-1])
            async with httpx.AsyncClient(base_url=base) as http:
                ready = (await http.get("/readyz")).json()
        kept_b, c_pid, new_d = map(int, after)
    assert outcome["outcome"] == "applied"
    assert slept.choices[0].message.content == "slept"
    assert chats(fake)[3]["messages"][-1]["content"].startswith("slept 4")
    assert kept_b == b_pid  # the same process: kept, not restarted
    assert new_d not in (d_pid, b_pid) and c_pid not in (a_pid, b_pid, d_pid, new_d)
    assert token == "***"  # the new server's secret joined the redaction layer
    names = offered(chats(fake)[-2])
    assert {"b_pid", "c_pid", "d_pid"} <= set(names) and not [n for n in names if n.startswith("a_")]
    assert ready["status"] == "ready" and ready["config"]["generation"] == 2
    await _until(lambda: not any(map(_alive, (kept_b, c_pid, new_d))))  # and all of them stop with the gateway


async def test_a_broken_config_is_refused_logged_and_the_old_one_keeps_serving(tmp_path, caplog):
    caplog.set_level("INFO", logger="toolgate")
    path = tmp_path / "toolgate.toml"
    async with FakeLLM() as fake:
        path.write_text(config_text(fake.url))
        async with serve(path) as (base, app), sdk(base) as client:
            broken = config_text(fake.url, upstream_model="new-model", tools='["nothing_like_this"]').replace('url = "', 'url = "ftp')
            path.write_text(broken)
            outcome = await asyncio.wait_for(app.state.reloader.reload(), 30)
            fake.push(Reply("still here"))
            reply = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
            path.write_text("[[models]\n")  # not even TOML
            unreadable = await asyncio.wait_for(app.state.reloader.reload(), 30)
            async with httpx.AsyncClient(base_url=base) as http:
                ready = (await http.get("/readyz"))
    assert outcome == {"outcome": "refused", "at": outcome["at"], "problems": 2}
    assert reply.choices[0].message.content == "still here"
    assert chats(fake)[0]["model"] == "old-model"
    lines = [r.getMessage() for r in caplog.records if r.name == "toolgate" and r.levelname == "ERROR"]
    assert f"config reload refused: {path}: upstreams.default.url: expected an http:// or https:// URL, got 'ftp{fake.url}'" in lines
    assert any(line.startswith(f"config reload refused: {path}: models[0].tools: 'nothing_like_this' names no tool") for line in lines)
    assert any(line.startswith(f"config reload refused: {path}: ") and "line" in line for line in lines)  # the TOML error
    assert unreadable["outcome"] == "refused" and unreadable["problems"] == 1
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert ready.json()["config"] == {"generation": 1, "last_reload": unreadable}


async def test_a_config_file_that_never_arrives_is_refused_in_bounded_time_and_the_gateway_keeps_answering(tmp_path, monkeypatch, caplog):
    """The config path is a pipe nobody writes: the reading thread is stuck, the reload is
    refused after its bound, so is one queued behind it, a third says the first is still reading, and meanwhile
    /healthz and chat completions answer at once."""
    monkeypatch.setattr(reload, "READ_TIMEOUT_S", 1.0)
    caplog.set_level("INFO", logger="toolgate")
    path = tmp_path / "toolgate.toml"
    async with FakeLLM() as fake:
        good = config_text(fake.url)
        path.write_text(good)
        async with serve(path) as (base, app), sdk(base) as client, httpx.AsyncClient(base_url=base, timeout=2) as http:
            path.unlink()
            os.mkfifo(path)
            stuck = asyncio.ensure_future(app.state.reloader.reload())
            await asyncio.sleep(0.2)
            health = await http.get("/healthz")  # while the reload waits on the pipe
            fake.push(Reply("still here"))
            reply = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
            outcome = await asyncio.wait_for(stuck, 10)
            again = await asyncio.wait_for(app.state.reloader.reload(), 10)  # waits behind the stuck one
            busy = await asyncio.wait_for(app.state.reloader.reload(), 10)  # the one thread and its queue are taken
            ready = await http.get("/readyz")
            # Let the stuck reader go: it gets the config, and its plan is thrown away.
            writer = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            path.unlink()
            path.write_text(good)
            os.write(writer, good.encode())
            os.close(writer)
            for _ in range(100):  # the thread frees itself, then a reload is served again
                applied = await asyncio.wait_for(app.state.reloader.reload(), 10)
                if applied["outcome"] == "applied":
                    break
                await asyncio.sleep(0.05)
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert reply.choices[0].message.content == "still here"
    assert outcome["outcome"] == "refused" and outcome["problems"] == 1
    assert again["outcome"] == busy["outcome"] == "refused"
    lines = [r.getMessage() for r in caplog.records if r.name == "toolgate" and r.levelname == "ERROR" and "keeps serving" not in r.getMessage()]
    assert lines[:3] == [f"config reload refused: {path}: reading the config took longer than 1 s"] * 2 + [
        f"config reload refused: {path}: an earlier reload is still reading the config"
    ]
    assert ready.status_code == 200 and ready.json()["config"]["last_reload"] == busy
    assert applied["outcome"] == "applied"


async def test_settings_that_need_a_restart_keep_their_running_value(tmp_path, caplog):
    caplog.set_level("INFO", logger="toolgate")
    path = tmp_path / "toolgate.toml"
    async with FakeLLM() as fake:
        path.write_text(config_text(fake.url))
        async with serve(path) as (base, app), sdk(base) as client:
            changed = config_text(fake.url, model="renamed").replace("[server]\n", "[server]\nport = 9\nmax_messages = 1\n")
            path.write_text(changed.replace("[tools.builtin", '[store]\nurl = "sqlite:///elsewhere.db"\n[tools.builtin'))
            outcome = await asyncio.wait_for(app.state.reloader.reload(), 30)
            runtime = app.state.runtime
            fake.push(Reply("renamed works"))
            reply = await client.chat.completions.create(model="renamed", messages=[{"role": "user", "content": "hi"}])
            with pytest.raises(openai.BadRequestError):  # max_messages took effect at once
                await client.chat.completions.create(model="renamed", messages=[{"role": "user", "content": "a"}] * 2)
            with pytest.raises(openai.NotFoundError):
                await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert outcome["outcome"] == "applied" and outcome["restart_needed"] == ["server.port", "store.url"]
    assert runtime.settings.server.port == 8080 and runtime.settings.store.url == "sqlite:///toolgate-responses.db"
    assert reply.choices[0].message.content == "renamed works"
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert f"config: {path}: server.port: changed, and needs a restart to take effect; the running value stays" in warned


def test_demo_mode_keeps_the_demo_model_and_unchanged_upstreams_stay_the_same_objects(tmp_path):
    path = tmp_path / "toolgate.toml"
    path.write_text(config_text("http://127.0.0.1:9/v1", extra="[upstreams.other]\nurl = \"http://127.0.0.1:10/v1\"\n"))
    running = load_config(path, {})
    demo = dataclasses.replace(running.upstreams["default"], url="http://127.0.0.1:11/v1")  # as `serve --demo` sets it
    as_demo = dataclasses.replace(running, upstreams={**running.upstreams, "default": demo})
    path.write_text(config_text("http://127.0.0.1:9/v1", extra="[upstreams.other]\nurl = \"http://127.0.0.1:12/v1\"\n"))
    kept = reload.plan(running).settings.upstreams
    with_demo = reload.plan(as_demo, True).settings.upstreams
    # Unchanged: the running object, so its connection slots and retry budget carry on.
    assert kept["default"] is running.upstreams["default"]
    assert kept["other"].url == "http://127.0.0.1:12/v1"
    assert with_demo["default"] is demo


async def test_sighup_to_this_process_reloads_the_app_it_serves(tmp_path):
    path = tmp_path / "toolgate.toml"
    before = signal.getsignal(signal.SIGHUP)  # SIG_DFL, or SIG_IGN under nohup
    async with FakeLLM() as fake:
        path.write_text(config_text(fake.url))
        async with serve(path) as (base, app), httpx.AsyncClient(base_url=base) as http:
            assert signal.getsignal(signal.SIGHUP) not in (signal.SIG_DFL, signal.SIG_IGN, None)  # else it would end pytest
            path.write_text(config_text(fake.url, model="m2"))
            os.kill(os.getpid(), signal.SIGHUP)
            async with asyncio.timeout(20):
                while (await http.get("/readyz")).json()["config"]["generation"] != 2:
                    await asyncio.sleep(0.02)
            models = (await http.get("/v1/models")).json()
            # Asked before a reload began: that one reload reads what they asked for.
            reloader = app.state.reloader
            for _ in range(3):
                reloader.soon()
            await asyncio.wait_for(reloader._task, 20)
            after_three = app.state.runtime.current.number
            # Asked while one runs: one more after it, never a pile of them.
            reloader.soon()
            await asyncio.sleep(0)  # the reload's first step: the lock is taken, the file not read yet
            assert reloader._lock.locked()
            for _ in range(3):
                reloader.soon()
            await asyncio.wait_for(reloader._task, 20)
            after_six = app.state.runtime.current.number
    assert [m["id"] for m in models["data"]] == ["m2"]
    assert (after_three, after_six) == (3, 5)
    assert signal.getsignal(signal.SIGHUP) is before  # restored when the server stopped


def test_toolgate_reload_says_why_it_cannot_find_the_gateway(tmp_path):
    garbage = tmp_path / "garbage.pid"
    garbage.write_text("not a pid\n")
    for kwargs, says in (
        ({"pid_file": str(tmp_path / "missing.pid")}, "cannot read the pid file"),
        ({"pid_file": str(garbage)}, "expected a process id, got 'not a pid'"),
        ({}, "--pid-file PATH"),
    ):
        with pytest.raises(reload.NotFound, match=re.escape(says)):
            reload.send_reload(**kwargs)


# -- a real gateway process: `toolgate reload`, SIGHUP with two workers ------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    with suppress(OSError), open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]
    return []


@asynccontextmanager
async def gateway_process(path: Path, *args: str, log: Path):
    """`python -m gateway serve` for the config at `path`; yields (process, base URL) once /healthz answers."""
    port = _free_port()
    path.write_text(path.read_text().replace("[server]\n", f"[server]\nport = {port}\n"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOOLGATE_", "PROMETHEUS_"))}
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(path), *args],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(timeout=2) as probe, asyncio.timeout(30):
            while True:
                assert proc.poll() is None, f"the gateway exited early: {log.read_text()[-2000:]}"
                with suppress(httpx.TransportError):
                    if (await probe.get(f"{base}/readyz")).status_code == 200:
                        break
                await asyncio.sleep(0.05)
        yield proc, base
    finally:
        if proc.poll() is None:
            workers = _children(proc.pid)
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                for pid in [*workers, proc.pid]:
                    with suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                proc.wait(5)


def toolgate(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOOLGATE_")}
    return subprocess.run([sys.executable, "-m", "gateway", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)


async def test_toolgate_reload_signals_the_gateway_its_pid_file_names(tmp_path):
    path, pid_file = tmp_path / "toolgate.toml", tmp_path / "toolgate.pid"
    async with FakeLLM() as fake:
        path.write_text(config_text(fake.url))
        async with gateway_process(path, "--pid-file", str(pid_file), log=tmp_path / "log") as (proc, base):
            assert pid_file.read_text().strip() == str(proc.pid)
            path.write_text(path.read_text().replace('name = "m"', 'name = "m2"'))
            sent = toolgate("reload", "--pid-file", str(pid_file))
            async with httpx.AsyncClient(base_url=base, timeout=5) as http, asyncio.timeout(20):
                while (ready := (await http.get("/readyz")).json())["config"]["generation"] != 2:
                    await asyncio.sleep(0.05)
                models = (await http.get("/v1/models")).json()
            proc.terminate()
            assert proc.wait(20) == 0
    assert sent.returncode == 0, sent.stderr
    assert f"sent SIGHUP to the gateway (pid {proc.pid})" in sent.stdout
    assert ready["config"]["last_reload"]["outcome"] == "applied"
    assert [m["id"] for m in models["data"]] == ["m2"]
    assert not pid_file.exists()  # removed at exit
    assert '"message":"config reloaded from' in (tmp_path / "log").read_text()
    # No gateway behind the pid file any more, or none given: a clear line and exit 1.
    pid_file.write_text(f"{proc.pid}\n")
    stale, none = toolgate("reload", "--pid-file", str(pid_file)), toolgate("reload")
    assert stale.returncode == 1 and f"no process {proc.pid} is running" in stale.stderr
    assert none.returncode == 1 and "--pid-file" in none.stderr
    # A pid that now names another program (the file outlived the gateway): not signalled.
    other = subprocess.Popen(["sleep", "30"])
    try:
        refused = toolgate("reload", "--pid", str(other.pid))
        assert other.poll() is None
    finally:
        other.kill()
        other.wait(5)
    assert refused.returncode == 1 and f"process {other.pid} is not a toolgate gateway" in refused.stderr


async def test_sighup_reloads_every_worker(tmp_path):
    path = tmp_path / "toolgate.toml"
    async with FakeLLM() as fake:
        path.write_text(config_text(fake.url))
        async with gateway_process(path, "--workers", "2", log=tmp_path / "log") as (proc, base):
            async with httpx.AsyncClient(base_url=base, timeout=5) as http, asyncio.timeout(30):
                path.write_text(path.read_text().replace('name = "m"', 'name = "m2"'))
                os.kill(proc.pid, signal.SIGHUP)
                pattern = re.compile(r'toolgate_config_generation\{pid="(\d+)"\} 2\.0')
                while len(reloaded := set(pattern.findall((await http.get("/metrics")).text))) < 2:
                    await asyncio.sleep(0.1)
            workers = _children(proc.pid)  # the two workers (and multiprocessing's resource tracker)
            assert reloaded <= {str(pid) for pid in workers}
            # Fresh connections land on either worker: every one serves the new config.
            seen = set()
            for _ in range(10):
                async with httpx.AsyncClient(base_url=base, timeout=5) as fresh:
                    seen.add(tuple(m["id"] for m in (await fresh.get("/v1/models")).json()["data"]))
            assert _children(proc.pid) == workers  # reloaded, not restarted
            proc.terminate()
            assert proc.wait(30) == 0
    assert seen == {("m2",)}
    assert (tmp_path / "log").read_text().count('"message":"config reloaded from') == 2


def test_every_source_whose_spec_is_unchanged_is_kept_and_a_changed_one_is_created_anew(tmp_path):
    spec = tmp_path / "openapi.json"
    spec.write_text('{"openapi": "3.0.3", "info": {"title": "t", "version": "1"}, "paths": {}}')
    path = tmp_path / "toolgate.toml"

    def write(allow: str) -> None:
        extra = f'[tools.openapi.pets]\nspec = "{spec}"\nbase_url = "http://127.0.0.1:9"\nallow = ["{allow}"]\n'
        path.write_text(config_text("http://127.0.0.1:9/v1", extra=extra))

    write("pets.internal")
    old = load_config(path, {})
    running = reload.toolbox_for(old).sources
    assert [s.name for s in running] == ["builtin", "gate", "pets"]
    same = reload.plan(old, running=running)
    assert [id(s) for s in same.sources] == [id(s) for s in running]  # kept: the running objects
    assert same.kept == running and same.start == [] and same.stop == []
    write("pets2.internal")  # the OpenAPI source's guard changed: a new source, the old one stops
    changed = reload.plan(old, running=running)
    assert changed.start == [changed.sources[2]] and changed.stop == [running[2]]
    assert changed.sources[2] is not running[2] and changed.sources[:2] == running[:2]
    assert changed.sources[2].settings.guard.hosts == frozenset({"pets2.internal"})


def test_a_ready_made_source_is_its_own_spec():
    from gateway.tools.base import StaticSource
    from gateway.tools.registry import create, ready

    source = StaticSource("made", [])
    assert create(ready(source)) is source and ready(source) == ready(source)
    assert ready(source) != ready(StaticSource("made", []))
