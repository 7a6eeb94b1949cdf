"""Faults against a real server on 127.0.0.1 (SPEC §11, "Invariants under faults").

Each test plays one misbehaving client, upstream or operator situation and asserts
what the others see: status codes, bodies, SSE events, log lines, exit codes, and
that `GET /healthz` of the same gateway answers within `HEALTHZ_S` on a fresh
connection while the fault is in progress. The first three run the gateway in
this process (its RSS and `in_flight` can be read); the rest run `python -m
gateway serve` as an operator does and signal it by its PID.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import termios
import textwrap
import time
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import httpx
import orjson
import pytest
from tests.fakellm import FakeLLM, Reply
from tests.support import sse_events
from tests.test_e2e import serve, settings_for

ROOT = Path(__file__).resolve().parent.parent
HEALTHZ_S = 0.5  # the one wall-clock bound that is tight; every other is generous
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


# -- helpers ---------------------------------------------------------------------------------


def _port(base: str) -> int:
    return int(base.rsplit(":", 1)[1].split("/", 1)[0])


async def healthz_fast(port: int) -> None:
    """`GET /healthz` on a connection of its own answers 200 within `HEALTHZ_S`, connect included."""
    started = time.monotonic()
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nhost: toolgate\r\nconnection: close\r\n\r\n")
        status, _, body = await read_response(reader)
    finally:
        writer.close()
    took = time.monotonic() - started
    assert status == 200 and orjson.loads(body) == {"status": "ok"}
    assert took < HEALTHZ_S, f"/healthz took {took:.3f} s during the fault"


async def read_response(reader: asyncio.StreamReader, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a content-length, read off a raw connection."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    status_line, *lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), timeout)
    return int(status_line.split(" ")[1]), headers, body


async def closed(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    """Wait for the server to close the connection; returns whatever came before (a reset counts)."""
    try:
        return await asyncio.wait_for(reader.read(), timeout)
    except ConnectionResetError:
        return b""


def assert_error(body: bytes, code: str) -> dict:
    error = orjson.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
    assert error["type"] == "invalid_request_error" and error["message"]
    return error


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        return int(re.search(r"^VmRSS:\s+(\d+) kB", f.read(), re.M).group(1))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CONFIG = """
[server]
port = {port}
grace_s = 1
request_timeout_s = 60
[upstreams.default]
type = "openai"
retries = 0
[[models]]
name = "m"
upstream_model = "fake-model"
tools = []
"""


@asynccontextmanager
async def gateway_process(tmp_path: Path, *args: str, upstream: str = "", stderr=None):
    """`python -m gateway serve` on a free port; yields (process, port) once /healthz answers.

    Stops the process (by its PID) if the test did not."""
    port = _free_port()
    config = tmp_path / "toolgate.toml"
    config.write_text(textwrap.dedent(CONFIG.format(port=port)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOOLGATE_", "PROMETHEUS_"))}
    if upstream:
        env["TOOLGATE_UPSTREAM_URL"] = upstream
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--log-level", "info", *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=stderr if stderr is not None else subprocess.DEVNULL,
    )
    try:
        async with httpx.AsyncClient(timeout=2) as probe, asyncio.timeout(30):
            while True:
                assert proc.poll() is None, f"the gateway exited early with {proc.returncode}"
                with suppress(httpx.TransportError):
                    if (await probe.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                        break
                await asyncio.sleep(0.05)
        yield proc, port
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """A test that failed midway: SIGTERM, then SIGKILL for the process and any workers it spawned."""
    if proc.poll() is None:
        workers = _children(proc.pid)
        proc.terminate()
        try:
            proc.wait(10) if proc.stderr is None else proc.communicate(timeout=10)  # drains an unread pipe
        except subprocess.TimeoutExpired:
            for pid in workers:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.kill()
    if proc.stderr is not None and not proc.stderr.closed:
        proc.communicate(timeout=10)
    proc.wait(10)


async def healthz_fast_or_refused(port: int) -> None:
    """While draining, the listener may already be closed; if it still accepts, /healthz is fast."""
    try:
        await healthz_fast(port)
    except ConnectionRefusedError:
        pass


def json_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        with suppress(ValueError):
            out.append(json.loads(line))
    return out


# -- 1. slow, silent and oversized request heads -----------------------------------------------


async def test_request_heads_that_are_slow_silent_or_too_large_are_refused():
    async with FakeLLM() as fake:
        fake.push(Reply("still here"))
        config = settings_for(fake, header_timeout_s=1, max_header_bytes=16384, max_headers=100)
        async with serve(config) as (base, _):
            port = _port(base)

            async def slow() -> tuple[int, bytes, float, bytes]:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                started = time.monotonic()

                async def trickle() -> None:
                    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: toolgate\r\n")
                    for i in range(20):  # 6 s of headers, were they all accepted
                        await asyncio.sleep(0.3)
                        writer.write(b"x-slow-%d: yes\r\n" % i)
                        await writer.drain()

                sender = asyncio.ensure_future(trickle())
                try:
                    status, headers, body = await read_response(reader)
                    assert headers["connection"] == "close"
                    rest = await closed(reader)
                    return status, body, time.monotonic() - started, rest
                finally:
                    sender.cancel()
                    await asyncio.gather(sender, return_exceptions=True)
                    writer.close()

            async def silent() -> tuple[bytes, float]:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                started = time.monotonic()
                try:
                    return await closed(reader), time.monotonic() - started
                finally:
                    writer.close()

            slow_task, silent_task = asyncio.ensure_future(slow()), asyncio.ensure_future(silent())
            await asyncio.sleep(0.5)
            await healthz_fast(port)  # while both heads are outstanding
            status, body, took, rest = await slow_task
            assert status == 408 and rest == b""
            assert_error(body, "header_timeout")
            assert took < 1 + 1.5
            said, took = await silent_task
            assert said == b"" and took < 1 + 1.5  # closed, not answered

            # An endless header value: refused at max_header_bytes, never buffered whole.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            rss_before = rss_kib()
            answer = asyncio.ensure_future(read_response(reader))
            try:
                writer.write(b"GET /healthz HTTP/1.1\r\nhost: toolgate\r\nx-endless: ")
                with suppress(ConnectionError):
                    for i in range(50):  # 200 KiB
                        if answer.done() or writer.is_closing():
                            break
                        writer.write(b"a" * 4096)
                        await writer.drain()
                        await asyncio.sleep(0.001)
                        if i == 10:
                            await healthz_fast(port)  # while the head keeps growing
                status, _, body = await answer
                assert status == 431
                assert_error(body, "headers_too_large")
                assert await closed(reader) == b""
                assert rss_kib() - rss_before < 4 * 1024
            finally:
                answer.cancel()
                writer.close()

            # Too many fields, in one write.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                fields = b"".join(b"x-field-%d: %d\r\n" % (i, i) for i in range(150))
                writer.write(b"GET /healthz HTTP/1.1\r\nhost: toolgate\r\n" + fields + b"\r\n")
                status, _, body = await read_response(reader)
                assert status == 431
                assert_error(body, "too_many_headers")
                assert await closed(reader) == b""
            finally:
                writer.close()

            async with httpx.AsyncClient(timeout=5) as client:
                r = await client.post(f"{base}/chat/completions", json=CHAT)
            assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "still here"
        assert len(fake.requests) == 1  # no refused head reached the upstream


# -- 2. half-sent bodies ------------------------------------------------------------------------


async def test_half_sent_bodies_time_out_and_do_not_count_against_the_cap():
    async with FakeLLM() as fake:
        fake.push(Reply("served meanwhile"))
        config = settings_for(fake, max_concurrency=2, body_timeout_s=1)
        async with serve(config) as (base, app):
            port = _port(base)
            head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: toolgate\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n"
            senders = [await asyncio.open_connection("127.0.0.1", port) for _ in range(8)]
            try:
                for _, writer in senders:
                    writer.write(head + b'{"model": ')  # 10 of the 1000 bytes, then nothing
                    await writer.drain()
                answers = [asyncio.ensure_future(read_response(reader)) for reader, _ in senders]
                await asyncio.sleep(0.1)
                await healthz_fast(port)
                async with httpx.AsyncClient(timeout=5) as client:
                    r = await client.post(f"{base}/chat/completions", json=CHAT)
                assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "served meanwhile"
                assert not any(a.done() for a in answers), "a half-sender was answered before its body timeout"
                for answer, (reader, writer) in zip(answers, senders):
                    status, headers, body = await answer
                    assert status == 408 and headers["connection"] == "close"
                    assert_error(body, "body_timeout")
                    writer.write(b"x" * 990)  # the rest of the body, late: not taken as it
                    assert await closed(reader) == b""
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                senders.append((reader, writer))
                writer.write(head.replace(b"content-length: 1000", b"content-length: %d" % (config.server.max_body_bytes + 1)))
                status, headers, body = await read_response(reader)
                assert status == 413 and headers["connection"] == "close"
                assert await closed(reader) == b""
            finally:
                for _, writer in senders:
                    writer.close()
            assert app.state.runtime.in_flight == 0
        assert len(fake.requests) == 1


# -- 3. a client that never reads its stream ------------------------------------------------------


async def test_a_client_that_never_reads_its_stream_is_dropped(caplog):
    caplog.set_level("INFO")
    # 16 MB in 16 KiB deltas, all different (identical ones end the stream as a runaway),
    # paced so that the upstream is still writing when the client is dropped: kernel
    # buffers on loopback hold several MB.
    answer = " ".join(f"{i:06d}" + "y" * (16 * 1024 - 6) for i in range(1_000))
    async with FakeLLM() as fake:
        fake.push(Reply(answer, chunk_delay_s=0.002))
        config = settings_for(fake, send_timeout_s=0.5, request_timeout_s=3)
        async with serve(config) as (base, app):
            runtime = app.state.runtime
            port = _port(base)
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            try:
                await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
                body = orjson.dumps({**CHAT, "stream": True})
                request = b"POST /v1/chat/completions HTTP/1.1\r\nhost: toolgate\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body)
                await asyncio.get_running_loop().sock_sendall(sock, request + body)
                # ... and never a recv.
                await fake.wait_requests(1)
                async with asyncio.timeout(5):
                    while runtime.in_flight != 1:
                        await asyncio.sleep(0.01)
                await healthz_fast(port)
                async with asyncio.timeout(6):
                    while runtime.in_flight:
                        await healthz_fast(port)
                        await asyncio.sleep(0.1)
                await fake.wait_disconnects(1)
            finally:
                sock.close()
    assert any("stopped reading" in r.getMessage() for r in caplog.records)
    [line] = [r.fields for r in caplog.records if r.name == "toolgate.access" and getattr(r, "fields", {}).get("stream")]
    assert line["ended"] == "client_left"  # the stall dropped it, not the deadline


async def test_a_client_that_reads_slowly_but_steadily_gets_all_of_a_large_answer(caplog):
    caplog.set_level("INFO")
    # One 4 MB body is one write: it stays above the high-water mark until nearly all of it is
    # read, far past send_timeout_s at this client's pace. It was dropped as "stopped reading".
    answer = "z" * 4_000_000
    async with FakeLLM() as fake:
        fake.push(Reply(answer))
        config = settings_for(fake, send_timeout_s=0.5, request_timeout_s=30)
        async with serve(config) as (base, app):
            port = _port(base)
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            received = bytearray()
            try:
                await loop.sock_connect(sock, ("127.0.0.1", port))
                body = orjson.dumps(CHAT)
                request = b"POST /v1/chat/completions HTTP/1.1\r\nhost: toolgate\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: %d\r\n\r\n" % len(body)
                await loop.sock_sendall(sock, request + body)
                async with asyncio.timeout(30):
                    while chunk := await loop.sock_recv(sock, 64 * 1024):  # a few KiB at a time: seconds for it all
                        received += chunk
                        await asyncio.sleep(0.02)
                        if len(received) % 500_000 < len(chunk):
                            await healthz_fast(port)
            finally:
                sock.close()
    head, _, payload = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert len(payload) > len(answer), [r.getMessage() for r in caplog.records if r.levelname != "INFO"]
    assert orjson.loads(payload)["choices"][0]["message"]["content"] == answer
    assert not any("stopped reading" in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]


# -- 4. SIGTERM with open streams ------------------------------------------------------------------


async def _stream_lines(client: httpx.AsyncClient, url: str, first: asyncio.Event, lines: list[str]) -> None:
    async with client.stream("POST", url, json={**CHAT, "stream": True}) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            lines.append(line)
            if '"content"' in line:
                first.set()


async def test_sigterm_ends_open_streams_with_an_error_event_and_exits_0(tmp_path):
    long_answer = " ".join(f"w{i}" for i in range(300))  # 30 s at 0.1 s a delta
    err_path = tmp_path / "stderr"
    async with FakeLLM() as fake:
        fake.push(
            Reply(long_answer, chunk_delay_s=0.1),
            Reply("short answer in time", chunk_delay_s=0.1),
            Reply("too late", delay_s=10),
        )
        with open(err_path, "wb") as err:
            async with gateway_process(tmp_path, upstream=fake.url, stderr=err) as (proc, port):
                url = f"http://127.0.0.1:{port}/v1/chat/completions"
                async with httpx.AsyncClient(timeout=15) as client:
                    long_first, short_first = asyncio.Event(), asyncio.Event()
                    long_lines: list[str] = []
                    short_lines: list[str] = []
                    long_task = asyncio.ensure_future(_stream_lines(client, url, long_first, long_lines))
                    await asyncio.wait_for(long_first.wait(), 5)
                    short_task = asyncio.ensure_future(_stream_lines(client, url, short_first, short_lines))
                    await asyncio.wait_for(short_first.wait(), 5)
                    # A request whose body is still arriving when the grace period ends.
                    late_body = orjson.dumps(CHAT)
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: toolgate\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(late_body) + late_body[:5])
                    await writer.drain()
                    await asyncio.sleep(0.1)
                    await healthz_fast(port)
                    os.kill(proc.pid, signal.SIGTERM)
                    stopped = time.monotonic()
                    await asyncio.sleep(0.3)
                    assert proc.poll() is None  # still draining
                    await healthz_fast_or_refused(port)  # the listener closes at SIGTERM
                    await asyncio.sleep(1.2 - (time.monotonic() - stopped))
                    writer.write(late_body[5:])
                    try:
                        late_status, late_headers, late = await read_response(reader)
                    finally:
                        writer.close()
                    await asyncio.wait_for(asyncio.gather(long_task, short_task), 1 + 3)
                    ended = time.monotonic() - stopped
                returncode = await asyncio.to_thread(proc.wait, 10)
                await fake.wait_disconnects(1)
    # The late one is refused before its reply started: a 503 that says why and when to retry.
    assert (late_status, late_headers.get("retry-after")) == (503, "1"), late
    assert orjson.loads(late)["error"]["code"] == "shutting_down"
    assert ended < 1 + 3
    assert returncode == 0

    events = sse_events("\n".join(long_lines) + "\n\n")
    assert events[-1] == "[DONE]"
    error = events[-2]["error"]
    assert error["code"] == "shutting_down" and error["type"] == "server_error"
    assert any(e["choices"] and e["choices"][0]["delta"].get("content") for e in events[:-2] if isinstance(e, dict) and "choices" in e)

    short = sse_events("\n".join(short_lines) + "\n\n")
    assert short[-1] == "[DONE]" and not any("error" in e for e in short if isinstance(e, dict))
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in short[:-1] if e.get("choices"))
    assert text == "short answer in time"

    stderr = err_path.read_text()
    assert "Traceback" not in stderr
    logged = [line for line in json_lines(stderr) if line.get("event") == "request"]
    outcomes = sorted((line["stream"], line["ended"], line["status"]) for line in logged)
    assert outcomes == [(False, "shutdown", 503), (True, "complete", 200), (True, "shutdown", 503)]
    assert all("shutting down" in line["error"] for line in logged if line["ended"] == "shutdown")


# -- 5. a log pipe nobody reads ----------------------------------------------------------------------


async def test_a_stuck_log_pipe_never_stalls_requests(tmp_path):
    total, concurrency = 1_500, 16
    body = orjson.dumps(CHAT)
    request = b"POST /v1/chat/completions HTTP/1.1\r\nhost: toolgate\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body) + body
    async with gateway_process(tmp_path, "--demo", stderr=subprocess.PIPE) as (proc, port):
        statuses: list[int] = []
        done = asyncio.Event()

        async def probe() -> int:
            probes = 0
            while not done.is_set():
                await healthz_fast(port)
                probes += 1
                await asyncio.sleep(0.05)
            return probes

        async def client(n: int) -> None:
            # Raw keep-alive connections: a cheap client, so the gateway is what is measured.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                for _ in range(n):
                    writer.write(request)
                    statuses.append((await read_response(reader, timeout=10))[0])
            finally:
                writer.close()

        prober = asyncio.ensure_future(probe())
        try:
            await asyncio.gather(*(client(total // concurrency + (i < total % concurrency)) for i in range(concurrency)))
        finally:
            done.set()
            probes = await prober
        assert statuses == [200] * total
        assert probes >= 1
        # The pipe is still unread: its buffer is full, and the rest waits in (or fell out of) the queue.
        os.kill(proc.pid, signal.SIGTERM)
        _, err = await asyncio.to_thread(proc.communicate, timeout=20)
    assert proc.returncode == 0
    assert len(err) > 65536  # more than a pipe holds: the writer was stuck for most of the run
    lines = json_lines(err.decode())
    served = sum(1 for line in lines if line.get("event") == "request" and line.get("status") == 200)
    dropped = sum(int(m.group(1)) for line in lines if (m := re.fullmatch(r"log queue was full: (\d+) line\(s\) dropped", line.get("message", ""))))
    assert served + dropped == total


async def test_sigterm_with_a_log_pipe_nobody_ever_reads_still_exits(tmp_path):
    # The pipe is full and stays unread through the exit: what is queued gets logs.STOP_WAIT_S,
    # then is dropped; the exit does not wait on the pipe (it used to, for ever).
    read_end, write_end = os.pipe()
    try:
        async with gateway_process(tmp_path, "--demo", stderr=write_end) as (proc, port):
            os.close(write_end)
            write_end = -1
            async with httpx.AsyncClient(timeout=5) as client, asyncio.timeout(60):
                unread = -1
                while unread != (unread := _unread(read_end)):  # full: 50 more requests' lines do not fit
                    for _ in range(50):
                        assert (await client.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=CHAT)).status_code == 200
                    await asyncio.sleep(0.2)
                await healthz_fast(port)  # the writer is stuck; serving is not
            os.kill(proc.pid, signal.SIGTERM)
            started = time.monotonic()
            returncode = await asyncio.to_thread(proc.wait, 30)
            took = time.monotonic() - started
        assert returncode == 0
        assert took < 1 + 2 + 5  # grace_s, logs.STOP_WAIT_S, and room for a slow machine
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)


def _unread(fd: int) -> int:
    """Bytes waiting in a pipe."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


# -- 6. --workers 2 -----------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with suppress(OSError):
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"spawn_main" in (entry / "cmdline").read_bytes():
                out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        return " Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]
    except OSError:
        return False


async def test_two_workers_serve_and_stop_on_sigterm(tmp_path):
    err_path = tmp_path / "stderr"
    async with FakeLLM() as fake:
        with open(err_path, "wb") as err:
            async with gateway_process(tmp_path, "--workers", "2", "--log-level", "warning", upstream=fake.url, stderr=err) as (proc, port):
                async with asyncio.timeout(20):
                    while len(workers := _children(proc.pid)) < 2:
                        await asyncio.sleep(0.05)
                assert len(workers) == 2
                for _ in range(6):
                    async with httpx.AsyncClient(timeout=5) as client:  # a connection each
                        r = await client.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=CHAT)
                    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
                # One stream still open at SIGTERM: its worker drains it like a single process.
                fake.push(Reply(" ".join(f"w{i}" for i in range(300)), chunk_delay_s=0.1))
                first, lines = asyncio.Event(), []
                async with httpx.AsyncClient(timeout=15) as client:
                    stream = asyncio.ensure_future(_stream_lines(client, f"http://127.0.0.1:{port}/v1/chat/completions", first, lines))
                    await asyncio.wait_for(first.wait(), 5)
                    await healthz_fast(port)
                    os.kill(proc.pid, signal.SIGTERM)
                    stopped = time.monotonic()
                    await asyncio.wait_for(stream, 1 + 3)
                returncode = await asyncio.to_thread(proc.wait, 15)
                took = time.monotonic() - stopped
    events = sse_events("\n".join(lines) + "\n\n")
    assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == "shutting_down"
    assert returncode == 0
    assert took < 1 + 2 + 5  # grace, last words, the supervisor's margin
    assert not [pid for pid in workers if _alive(pid)]
    # The workers log at the supervisor's --log-level: nothing below warning, no errors.
    levels = {line["level"] for line in json_lines(err_path.read_text())}
    assert levels <= {"warning"}, levels
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
