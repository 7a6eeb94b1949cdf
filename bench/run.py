"""toolgate's benchmark: every scenario, the baselines beside it, one command.

    .venv/bin/python -m bench.run              # full run (~8 min): bench/results/latest.{md,json}
    .venv/bin/python -m bench.run --quick      # one short round of everything (~2 min)
    .venv/bin/python -m bench.run --smoke --out /tmp/b   # seconds; what tests/test_bench_smoke.py runs
    .venv/bin/python -m bench.run --profile    # also py-spy profiles of toolgate under S2/S3/S4 load

Layout on two cores: the gateway under test (toolgate, or a floor proxy) on core 0; the fake
upstream, the load generator and this process on core 1 (S6 unpins everything). Every
toolgate figure comes with the same figure, same run, interleaved round by round, for
"direct" (the load generator straight at the fake) and "floor" (bench/floor.py: Starlette +
httpx over the aiohttp transport, toolgate's upstream stack, and nothing else), plus an
aiohttp-direct floor as a reference. Medians over the rounds are reported.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import procs
from bench.procs import ROOT, Proc

HERE = Path(__file__).resolve().parent
CONFIGS = HERE / "configs"
PY = sys.executable
CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
RESPONSES_DONE = "event: response.completed"  # a Responses stream's last event ([DONE] is chat's)
README = HERE / "README.md"
README_START = "<!-- results:start -->"
README_END = "<!-- results:end -->"


@dataclass(frozen=True)
class Plan:
    name: str
    rounds: int
    warmup_s: float
    s1_s: float
    s2_s: float
    s3_ttfb_s: float
    s3_cpu_s: float
    s4_s: float
    s6_s: float
    s7_s: float
    s5_streams: int
    s5_stream_s: float
    nap_ms: int = 100
    c_s2: int = 64
    c_s3: int = 16
    c_s4: int = 16
    install_wrk: bool = True
    wrk: bool = True  # wrk runs whole seconds only: the smoke plan uses bench.load throughout
    settle_s: float = 0.5  # before reading an idle RSS
    max_rps: int = 60_000  # the request cap of a run is max_rps x its duration
    s8_slices: int = 4  # S8's pairs of runs per shape and round (even: each order as often)


PLANS = {
    "full": Plan("full", rounds=3, warmup_s=1.0, s1_s=3, s2_s=10, s3_ttfb_s=2, s3_cpu_s=4, s4_s=5, s6_s=10, s7_s=3,
                 s5_streams=500, s5_stream_s=6),
    "quick": Plan("quick", rounds=1, warmup_s=0.5, s1_s=1.5, s2_s=3, s3_ttfb_s=1, s3_cpu_s=2, s4_s=2, s6_s=3,
                  s7_s=1.5, s5_streams=500, s5_stream_s=4, s8_slices=2),
    "smoke": Plan("smoke", rounds=1, warmup_s=0.05, s1_s=0.15, s2_s=0.2, s3_ttfb_s=0.3, s3_cpu_s=0.3, s4_s=0.2,
                  s6_s=0.2, s7_s=0.15, s5_streams=20, s5_stream_s=0.3, nap_ms=20, c_s2=8, c_s3=4, c_s4=4,
                  install_wrk=False, wrk=False, settle_s=0.05, s8_slices=2),
}  # fmt: skip


def body(model: str, *, stream: bool = False, text: str = "Say hello.") -> bytes:
    data: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 64}
    if stream:
        data["stream"] = True
    return json.dumps(data).encode()


def responses_body(model: str, *, stream: bool = False, store: bool = True, text: str = "Say hello.") -> bytes:
    """The Responses API request `body()` makes for chat: same model, question and token cap."""
    data: dict[str, Any] = {"model": model, "input": text, "max_output_tokens": 64}
    if stream:
        data["stream"] = True
    if not store:
        data["store"] = False
    return json.dumps(data).encode()


# -- wrk: found, installed, or replaced -------------------------------------------------------


def find_wrk(install: bool) -> str | None:
    """wrk's path; installs the Debian package when allowed and possible, else None."""
    path = shutil.which("wrk")
    if path or not install:
        return path
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("bench: wrk not found; installing it with apt-get", file=sys.stderr)
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}}
        try:
            subprocess.run(["apt-get", "update", "-qq"], timeout=300, **quiet)
            subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], timeout=300, **quiet)
        except (OSError, subprocess.SubprocessError):
            pass
    return shutil.which("wrk")


# -- the harness ------------------------------------------------------------------------------


class Harness:
    def __init__(self, plan: Plan, out: Path, loadgen: str, profile: bool, only: frozenset[str] = frozenset()) -> None:
        self.plan = plan
        self.only = only  # scenarios to run (--only); empty: all
        self.out = out
        self.logs = out / "logs"
        self.tmp = out / "tmp"
        for d in (self.logs, self.tmp):
            d.mkdir(parents=True, exist_ok=True)
        self.gw_cpus, self.side_cpus = procs.cores()
        self.wrk = find_wrk(plan.install_wrk) if loadgen != "asyncio" and plan.wrk else None
        self.profile = profile
        self.procs: list[Proc] = []
        self.fake: Proc | None = None
        self.raw: dict[str, Any] = {}  # scenario -> target -> [per-round measurements]
        self.notes: list[str] = []
        self.failures: dict[str, str] = {}
        self._bodies: dict[bytes, Path] = {}

    def wants(self, *scenarios: str) -> bool:
        return not self.only or any(s in self.only for s in scenarios)

    # -- processes --------------------------------------------------------------------------

    def _track(self, proc: Proc) -> Proc:
        self.procs.append(proc)
        return proc

    def start_fake(self) -> Proc:
        p = self.plan
        slow_chunk_ms = p.s5_stream_s * 1000 / 100
        argv = [PY, "-m", "bench.fake", "--port", "0", "--chunks", "100", "--nap-calls", "8",
                "--nap-ms", str(p.nap_ms), "--slow-chunk-ms", f"{slow_chunk_ms:g}"]  # fmt: skip
        proc = self._track(procs.start("fake", argv, cpus=self.side_cpus, log=self.logs / "fake.log", stdout=subprocess.PIPE))
        line = _readline(proc, 30)
        if not line.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"the fake did not start: {line!r}\n{proc.log_tail()}")
        proc.url = line.strip().removesuffix("/v1")  # the origin: load goes to proc.url + CHAT
        proc.extra["base"] = line.strip()
        self.fake = proc
        return proc

    def start_toolgate(self, name: str, config: str, *, workers: int = 1, cpus: set[int] | None = None) -> Proc:
        port = procs.free_port()
        exe = Path(PY).parent / "toolgate"
        argv = [str(exe)] if exe.exists() else [PY, "-m", "gateway"]
        argv += ["serve", "--config", str(CONFIGS / config), "--port", str(port), "--log-level", "warning"]
        if workers > 1:
            argv += ["--workers", str(workers)]
        env = {"TOOLGATE_UPSTREAM_URL": self.fake.extra["base"], "PYTHONPATH": str(ROOT), "TOOLGATE_API_KEYS": "",
               "TOOLGATE_STORE_URL": f"sqlite:///{self.tmp / name}-responses.db"}  # S8's store; gone after the run
        proc = self._track(procs.start(name, argv, cpus=cpus or self.gw_cpus, env=env, log=self.logs / f"{name}.log"))
        proc.url = f"http://127.0.0.1:{port}"
        proc.extra["workers"] = workers
        return proc

    def start_floor(self, name: str, client: str, *, workers: int = 1, cpus: set[int] | None = None) -> Proc:
        port = procs.free_port()
        argv = [PY, "-m", "bench.floor", "--port", str(port), "--upstream", self.fake.extra["base"], "--client", client]
        if workers > 1:
            argv += ["--workers", str(workers)]
        proc = self._track(procs.start(name, argv, cpus=cpus or self.gw_cpus, log=self.logs / f"{name}.log"))
        proc.url = f"http://127.0.0.1:{port}"
        proc.extra["workers"] = workers
        return proc

    def ready(self, proc: Proc) -> dict[str, Any]:
        """Wait until it serves; for toolgate, return what /readyz says."""
        is_toolgate = "toolgate" in proc.name
        procs.wait_http(proc, proc.url + ("/readyz" if is_toolgate else "/healthz"), timeout_s=60)
        workers = proc.extra.get("workers", 1)
        deadline = time.monotonic() + 30
        while workers > 1 and len(proc.pids()) < workers + 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        if not is_toolgate:
            return {"status": "ready"}
        import urllib.request

        # "degraded" is 200 too: a tool source still connecting on a loaded machine gets its time.
        deadline = time.monotonic() + 60
        while True:
            with urllib.request.urlopen(proc.url + "/readyz", timeout=5) as response:
                readiness = json.loads(response.read())
            if readiness.get("status") == "ready" or time.monotonic() > deadline:
                return readiness
            time.sleep(0.2)

    def stop(self, proc: Proc) -> None:
        procs.stop(proc)
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc)

    # -- load -------------------------------------------------------------------------------

    def body_file(self, data: bytes) -> Path:
        path = self._bodies.get(data)
        if path is None:
            path = self._bodies[data] = self.tmp / f"body{len(self._bodies)}.json"
            path.write_bytes(data)
        return path

    def _spawn_load(self, argv: Sequence[str], cpus: set[int], env: dict | None = None) -> subprocess.Popen:
        return subprocess.Popen(
            list(argv), cwd=ROOT, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=lambda: os.sched_setaffinity(0, cpus),
        )  # fmt: skip

    def _reap(self, popen: subprocess.Popen, limit_s: float) -> tuple[str, str, float]:
        """Read all output, wait for exit (killing it by PID after limit_s); (stdout, stderr, cpu_s)."""
        timer = threading.Timer(limit_s, lambda: _kill(popen.pid))
        timer.start()
        try:
            out, err = popen.stdout.read(), popen.stderr.read()
            _, status, usage = os.wait4(popen.pid, 0)
            popen.returncode = os.waitstatus_to_exitcode(status)
        finally:
            timer.cancel()
            popen.stdout.close()
            popen.stderr.close()
        return out, err, usage.ru_utime + usage.ru_stime

    def wrk_run(self, target: Proc, url: str, data: bytes, c: int, seconds: float, cpus: set[int] | None = None) -> dict:
        """One wrk run against target; CPU of target and fake sampled around it."""
        env = {"BENCH_BODY_FILE": str(self.body_file(data)), "BENCH_MAX_REQUESTS": str(int(self.plan.max_rps * seconds))}
        argv = [self.wrk, "-t1", f"-c{c}", f"-d{max(1, round(seconds))}s", "--timeout", "10s", "-s", str(HERE / "post.lua"), url]
        side = [self.fake] if target is not self.fake else []
        before = _snap(target, side)
        popen = self._spawn_load(argv, cpus or self.side_cpus, env)
        out, err, load_cpu = self._reap(popen, seconds + 30)
        after = _snap(target, side)
        line = next((l for l in out.splitlines() if l.startswith("BENCH_JSON ")), None)
        if line is None:
            raise RuntimeError(f"wrk gave no result (exit {popen.returncode}): {err.strip()[:500]}")
        w = json.loads(line[len("BENCH_JSON ") :])
        wall = w["duration_us"] / 1e6
        errors = sum(w["errors"].values())
        return _measurement(
            requests=w["requests"] - w["errors"]["status"], wall=wall, before=before, after=after, load_cpu=load_cpu,
            latency_ms={k: v / 1000 for k, v in w["latency_us"].items()}, errors=errors, loadgen="wrk",
        )  # fmt: skip

    def load_run(self, target: Proc, url: str, data: bytes, c: int, seconds: float, *, warmup: float | None = None,
                 cpus: set[int] | None = None) -> dict:  # fmt: skip
        """A closed-loop run of bench.load; CPU sampled at its GO and END marks."""
        warmup = self.plan.warmup_s / 2 if warmup is None else warmup
        argv = [PY, "-m", "bench.load", "closed", "--url", url, "--body", str(self.body_file(data)), "-c", str(c),
                "--warmup", f"{warmup:g}", "--duration", f"{seconds:g}", "--max-requests", str(int(self.plan.max_rps * seconds))]  # fmt: skip
        if url.endswith(RESPONSES):
            argv += ["--done", RESPONSES_DONE]
        side = [self.fake] if target is not self.fake else []
        popen = self._spawn_load(argv, cpus or self.side_cpus)
        marks: dict[str, dict] = {}
        lines = []
        timer = threading.Timer(warmup + seconds + 30, lambda: _kill(popen.pid))
        timer.start()
        try:
            for line in popen.stdout:
                line = line.strip()
                if line in ("GO", "END"):
                    marks[line] = _snap(target, side)
                else:
                    lines.append(line)
        finally:
            timer.cancel()
        _, err, load_cpu = self._reap(popen, 30)
        result = next((json.loads(l[7:]) for l in lines if l.startswith("RESULT ")), None)
        if result is None or "GO" not in marks or "END" not in marks:
            raise RuntimeError(f"bench.load gave no result (exit {popen.returncode}): {err.strip()[-800:]}")
        bad = sum(v for k, v in result["statuses"].items() if k != "200") + sum(result["errors"].values())
        m = _measurement(
            requests=result["requests"], wall=result["seconds"], before=marks["GO"], after=marks["END"],
            load_cpu=load_cpu * result["seconds"] / (result["seconds"] + warmup), latency_ms=result["latency_ms"],
            errors=bad + result["incomplete"], loadgen="bench.load",
        )  # fmt: skip
        m["ttfb_ms"] = result["ttfb_ms"]
        m["watched"] = result["watched"]
        m["events_per_request"] = result.get("events_per_request")
        m["frames_per_request"] = result.get("frames_per_request")
        return m

    def post_run(self, target: Proc, url: str, data: bytes, c: int, seconds: float, cpus: set[int] | None = None) -> dict:
        """Plain non-streamed POSTs: wrk when there is one, else bench.load."""
        if self.wrk:
            return self.wrk_run(target, url, data, c, seconds, cpus)
        return self.load_run(target, url, data, c, seconds, cpus=cpus)

    def hold_run(self, target: Proc, url: str, data: bytes, n: int) -> dict:
        """n streams open at once; RSS of the target sampled while they are open."""
        argv = [PY, "-m", "bench.load", "hold", "--url", url, "--body", str(self.body_file(data)), "-n", str(n),
                "--open-timeout", "30", "--timeout", f"{self.plan.s5_stream_s * 3 + 30:g}"]  # fmt: skip
        popen = self._spawn_load(argv, self.side_cpus)
        sampler = None
        open_rss = 0
        lines = []
        timer = threading.Timer(self.plan.s5_stream_s * 3 + 90, lambda: _kill(popen.pid))
        timer.start()
        try:
            for line in popen.stdout:
                line = line.strip()
                if line.startswith("OPEN "):
                    open_rss = target.rss()
                    sampler = procs.Sampler(target).__enter__()
                else:
                    lines.append(line)
        finally:
            timer.cancel()
            if sampler is not None:
                sampler.__exit__()
        _, err, _ = self._reap(popen, 30)
        result = next((json.loads(l[7:]) for l in lines if l.startswith("RESULT ")), None)
        if result is None:
            raise RuntimeError(f"bench.load hold gave no result (exit {popen.returncode}): {err.strip()[-800:]}")
        result["rss_at_open"] = open_rss
        result["rss_peak"] = max(open_rss, sampler.peak if sampler else 0)
        return result

    def record(self, scenario: str, target: str, measurement: dict) -> None:
        self.raw.setdefault(scenario, {}).setdefault(target, []).append(measurement)

    def attempt(self, scenario: str, target: str, run: Callable[[], dict]) -> None:
        try:
            measurement = run()
            if measurement.get("requests", 1) == 0:
                raise RuntimeError(f"no successful request: {json.dumps(measurement)[:400]}")
            if measurement.get("errors"):
                self.notes.append(f"{scenario}/{target}: {measurement['errors']} failed or incomplete requests in one run")
            self.record(scenario, target, measurement)
        except Exception as exc:  # one broken target must not sink the whole run
            key = f"{scenario}/{target}"
            self.failures.setdefault(key, f"{type(exc).__name__}: {str(exc)[:600]}")
            print(f"bench: {key} failed: {exc}", file=sys.stderr)

    # -- the scenarios ----------------------------------------------------------------------

    def run(self) -> dict:
        p = self.plan
        started = time.monotonic()
        fake = self.start_fake()
        basic = ("S1", "S2", "S3", "S3-paced", "S2-log", "S8")
        wanted = {
            "floor": (lambda: self.start_floor("floor", "httpx"), basic),
            "floor-aiohttp": (lambda: self.start_floor("floor-aiohttp", "aiohttp"), basic),
            "toolgate": (lambda: self.start_toolgate("toolgate", "passthrough.toml"), basic),
            "toolgate-log": (lambda: self.start_toolgate("toolgate-log", "passthrough-log.toml"), ("S2-log",)),
            "toolgate-calc": (lambda: self.start_toolgate("toolgate-calc", "loop-calc.toml"), ("S4", "S8")),
            "toolgate-mcp": (lambda: self.start_toolgate("toolgate-mcp", "loop-mcp.toml"), ("S4",)),
            "toolgate-nap": (lambda: self.start_toolgate("toolgate-nap", "parallel-nap.toml"), ("S7",)),
            "toolgate-nap-mcp": (lambda: self.start_toolgate("toolgate-nap-mcp", "parallel-mcp.toml"), ("S7",)),
        }
        gateways = {name: start() for name, (start, scenarios) in wanted.items() if self.wants(*scenarios)}
        for name, proc in list(gateways.items()):
            try:
                readiness = self.ready(proc)
            except Exception as exc:
                self.failures[f"start/{name}"] = str(exc)[:800]
                print(f"bench: {name} did not start: {exc}", file=sys.stderr)
                gateways.pop(name)
                continue
            if readiness.get("status") != "ready":
                self.failures[f"start/{name}"] = f"/readyz says {json.dumps(readiness)}"
                if name == "toolgate-mcp":
                    gateways.pop(name)
        self.gateways = gateways
        targets = [("direct", fake)] + [(n, gateways[n]) for n in ("floor", "floor-aiohttp", "toolgate") if n in gateways]

        # Warm every process up before the first measured round (not worth it at smoke scale).
        warm = targets + [(n, gateways[n]) for n in ("toolgate-log",) if n in gateways] if p.name != "smoke" else []
        for name, proc in warm:
            model = "fake-model" if name in ("direct", "floor", "floor-aiohttp") else "bench"
            self.attempt("warmup", name, lambda: self.post_run(proc, proc.url + CHAT, body(model), p.c_s2, p.warmup_s))
            self.attempt("warmup", name, lambda: self.load_run(proc, proc.url + CHAT, body(model, stream=True), p.c_s3, p.warmup_s, warmup=0))
        for name in ("toolgate", "toolgate-calc") if p.name != "smoke" else ():
            if name in gateways:
                proc, model = gateways[name], "bench" if name == "toolgate" else "bench-calc"
                self.attempt("warmup", name, lambda: self.load_run(proc, proc.url + RESPONSES, responses_body(model), p.c_s3, p.warmup_s, warmup=0))
        self.raw.pop("warmup", None)

        for r in range(p.rounds):
            rotated = targets[r % len(targets) :] + targets[: r % len(targets)]
            print(f"bench: round {r + 1}/{p.rounds} ({time.monotonic() - started:.0f} s)", file=sys.stderr)
            for name, proc in rotated:
                model = "fake-model" if proc is fake or name.startswith("floor") else "bench"
                paced = "paced" if proc is fake or name.startswith("floor") else "bench-paced"
                url = proc.url + CHAT
                if self.wants("S1"):
                    self.attempt("S1", name, lambda: self.post_run(proc, url, body(model), 1, p.s1_s))
                if self.wants("S2"):
                    self.attempt("S2", name, lambda: self.post_run(proc, url, body(model), p.c_s2, p.s2_s))
                if self.wants("S3"):
                    self.attempt("S3-ttfb", name, lambda: self.load_run(proc, url, body(model, stream=True), 1, p.s3_ttfb_s))
                    self.attempt("S3-cpu", name, lambda: self.load_run(proc, url, body(model, stream=True), p.c_s3, p.s3_cpu_s))
                if self.wants("S3-paced"):
                    # 100 chunks 1 ms apart: one chunk per network read, the per-chunk cost laid bare.
                    # (A paced stream takes 100 ms at least: the window holds several, even at smoke scale.)
                    self.attempt("S3-paced", name, lambda: self.load_run(proc, url, body(paced, stream=True), p.c_s3, max(p.s3_cpu_s, 0.6)))
            if "toolgate-log" in gateways:
                proc = gateways["toolgate-log"]
                self.attempt("S2-log", "toolgate-log", lambda: self.post_run(proc, proc.url + CHAT, body("bench"), p.c_s2, p.s2_s))
            for alias, gateway in (("bench-calc", "toolgate-calc"), ("bench-mcp", "toolgate-mcp")):
                if gateway not in gateways or not self.wants("S4"):
                    continue
                proc = gateways[gateway]
                for suffix in ("", "-50ms"):
                    data = body(alias + suffix, text="What is 2+3?")
                    self.attempt(f"S4{suffix or '-0ms'}", gateway, lambda: self.load_run(proc, proc.url + CHAT, data, p.c_s4, p.s4_s))
            if "toolgate-nap" in gateways:
                proc = gateways["toolgate-nap"]
                self.attempt("S7", "toolgate-nap", lambda: self.load_run(proc, proc.url + CHAT, body("bench-nap", text="Nap."), 1, p.s7_s))
            if "toolgate-nap-mcp" in gateways:
                proc = gateways["toolgate-nap-mcp"]
                self.attempt("S7", "toolgate-nap-mcp", lambda: self.load_run(proc, proc.url + CHAT, body("bench-nap-mcp", text="Nap."), 1, p.s7_s))
            if self.wants("S8"):
                self.run_s8(gateways)

        if self.profile and "toolgate" in gateways:
            self.run_profiles(gateways)
        for name in list(gateways):
            self.stop(gateways.pop(name))

        if self.wants("S6"):
            print(f"bench: S6 ({time.monotonic() - started:.0f} s)", file=sys.stderr)
            self.run_s6()
        if self.wants("S5"):
            print(f"bench: S5 ({time.monotonic() - started:.0f} s)", file=sys.stderr)
            self.run_s5()
        self.stop_all()
        self.elapsed_s = time.monotonic() - started
        return self.raw

    def run_s8(self, gateways: dict[str, Proc]) -> None:
        """The Responses API on the processes that served chat this round, at the same concurrency:
        pass-through (S2's and S3's shapes) and S4's two-round `calculate` loop, store on and off.
        Each Responses run has its own chat run of the same shape on the same process right beside
        it, so the ratio spans seconds, not the minutes between this and the round's S2: this VM's
        speed drifts within minutes, and by a tenth or more between runs of 10 s. So each shape's
        time is cut into the plan's s8_slices pairs, chat first in every other one: the figure is the median
        over all pairs of all rounds."""
        p = self.plan
        shapes = []
        if "toolgate" in gateways:
            proc = gateways["toolgate"]
            shapes.append(("post", proc, body("bench"), lambda store: responses_body("bench", store=store), self.post_run, p.c_s2, p.s2_s))
            shapes.append(("stream", proc, body("bench", stream=True), lambda store: responses_body("bench", stream=True, store=store), self.load_run, p.c_s3, p.s3_cpu_s))
        if "toolgate-calc" in gateways:
            proc = gateways["toolgate-calc"]
            calc = "What is 2+3?"
            shapes.append(("loop", proc, body("bench-calc", text=calc), lambda store: responses_body("bench-calc", store=store, text=calc), self.load_run, p.c_s4, p.s4_s))
        for _, proc, _, responses, *_ in shapes:
            self.open_store(proc, responses(True))  # the first on each process opens its store
        for kind, proc, chat, responses, run, c, seconds in shapes:
            for store in (True, False):
                key = f"S8-{kind}-{'store' if store else 'nostore'}"
                pair = [
                    (key + "-chat", proc.url + CHAT, chat),
                    (key, proc.url + RESPONSES, responses(store)),
                ]
                for n in range(p.s8_slices):
                    for scenario, url, data in pair[::-1] if n % 2 else pair:
                        self.attempt(scenario, proc.name, lambda: run(proc, url, data, c, seconds / p.s8_slices))

    def open_store(self, proc: Proc, data: bytes) -> None:
        """One stored response, unmeasured. The store opens on first use (a new file and its
        schema): no request's cost, and on a slow disk longer than a whole smoke slice."""
        import urllib.request

        request = urllib.request.Request(proc.url + RESPONSES, data=data, headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                response.read()
        except OSError as exc:  # the scenario's own runs then say what is wrong
            self.notes.append(f"S8: opening {proc.name}'s response store failed: {exc}")

    def run_s5(self) -> None:
        """Memory: a fresh gateway, idle; warmed; then n slow streams open at once."""
        p = self.plan
        for name, start, model in (
            ("toolgate", lambda: self.start_toolgate("toolgate-s5", "passthrough.toml"), "bench-slow"),
            ("floor", lambda: self.start_floor("floor-s5", "httpx"), "slow"),
            ("floor-aiohttp", lambda: self.start_floor("floor-aiohttp-s5", "aiohttp"), "slow"),
        ):
            proc = start()

            def measure() -> dict:
                self.ready(proc)
                time.sleep(p.settle_s)
                fresh = proc.rss()
                warm_model = "bench" if name == "toolgate" else "fake-model"
                self.load_run(proc, proc.url + CHAT, body(warm_model), 4, p.warmup_s, warmup=0)
                self.load_run(proc, proc.url + CHAT, body(warm_model, stream=True), 4, p.warmup_s, warmup=0)
                time.sleep(p.settle_s)
                idle = proc.rss()
                held = self.hold_run(proc, proc.url + CHAT, body(model, stream=True), p.s5_streams)
                held.update(rss_fresh=fresh, rss_idle=idle, per_stream=(held["rss_peak"] - idle) / p.s5_streams)
                return held

            try:
                self.attempt("S5", name, measure)
            finally:
                self.stop(proc)

    def run_s6(self) -> None:
        """Two workers, nothing pinned: toolgate --workers 2 against the floor with 2 workers."""
        p = self.plan
        everywhere = procs.ALL_CORES
        if len(everywhere) < 2:
            self.notes.append("S6 ran on a one-core machine: two workers cannot scale there.")
        self.fake.repin(everywhere)
        started = {
            "toolgate": self.start_toolgate("toolgate-2w", "passthrough.toml", workers=2, cpus=everywhere),
            "floor": self.start_floor("floor-2w", "httpx", workers=2, cpus=everywhere),
        }
        try:
            for name, proc in list(started.items()):
                try:
                    self.ready(proc)
                except Exception as exc:
                    self.failures[f"S6/{name}"] = str(exc)[:800]
                    started.pop(name)
            for name, proc in started.items():
                model = "bench" if name == "toolgate" else "fake-model"
                self.attempt("warmup", name, lambda: self.post_run(proc, proc.url + CHAT, body(model), p.c_s2, p.warmup_s, everywhere))
            self.raw.pop("warmup", None)
            for _ in range(p.rounds):
                for name, proc in started.items():
                    model = "bench" if name == "toolgate" else "fake-model"
                    self.attempt("S6", name, lambda: self.post_run(proc, proc.url + CHAT, body(model), p.c_s2, p.s6_s, everywhere))
        finally:
            for proc in started.values():
                self.stop(proc)
            self.fake.repin(self.side_cpus)

    def run_profiles(self, gateways: dict[str, Proc]) -> None:
        """py-spy on toolgate (core 0) while S2, S3 and S4 load runs; collapsed stacks + top tables."""
        spy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
        if not Path(spy).exists():
            self.notes.append("--profile: py-spy is not installed (.venv/bin/pip install py-spy)")
            return
        p = self.plan
        jobs = [
            ("S2", gateways["toolgate"], lambda proc: self.post_run(proc, proc.url + CHAT, body("bench"), p.c_s2, p.s2_s)),
            ("S3", gateways["toolgate"], lambda proc: self.load_run(proc, proc.url + CHAT, body("bench", stream=True), p.c_s3, p.s2_s)),
        ]
        if "toolgate-calc" in gateways:
            jobs.append(("S4", gateways["toolgate-calc"],
                         lambda proc: self.load_run(proc, proc.url + CHAT, body("bench-calc", text="What is 2+3?"), p.c_s4, p.s2_s)))  # fmt: skip
        for scenario, proc, load in jobs:
            raw = self.out / f"profile-{scenario}.txt"
            spy_proc = procs.start(
                f"py-spy-{scenario}",
                [spy, "record", "--pid", str(proc.pid), "--rate", "250", "--duration", f"{int(p.s2_s + 2)}",
                 "--format", "raw", "--nonblocking", "--output", str(raw)],
                cpus=self.side_cpus, log=self.logs / f"py-spy-{scenario}.log",
            )  # fmt: skip
            time.sleep(1.0)
            try:
                measured = load(proc)
                spy_proc.popen.wait(p.s2_s + 30)
            finally:
                procs.stop(spy_proc)
            if raw.exists():
                (self.out / f"profile-{scenario}-top.txt").write_text(
                    f"{scenario} under load while profiled: {measured['rps']:.0f} req/s\n\n" + top_table(raw.read_text())
                )


def _snap(target: Proc, side: Sequence[Proc]) -> dict:
    per_pid = {pid: procs.cpu_s([pid]) for pid in target.pids()}
    return {"t": time.perf_counter(), "target": sum(per_pid.values()), "side": sum(p.cpu() for p in side), "pids": per_pid}


def _measurement(*, requests: int, wall: float, before: dict, after: dict, load_cpu: float, latency_ms: dict,
                 errors: int, loadgen: str) -> dict:  # fmt: skip
    target_cpu = after["target"] - before["target"]
    side_cpu = after["side"] - before["side"] + load_cpu
    span = max(after["t"] - before["t"], 1e-9)
    return {
        "requests": requests,
        "seconds": wall,
        "rps": requests / wall if wall else 0.0,
        "latency_ms": latency_ms,
        "cpu_ms_per_request": target_cpu * 1000 / requests if requests else None,
        "target_cpu_util": target_cpu / span,
        "fake_and_loadgen_cpu_util": side_cpu / span,
        "errors": errors,
        "loadgen": loadgen,
        # CPU seconds per process of the target (uvicorn workers, MCP server): is the load balanced?
        "cpu_s_by_pid": {pid: round(after["pids"][pid] - before["pids"].get(pid, 0.0), 2) for pid in after["pids"]},
    }


def _readline(proc: Proc, timeout_s: float) -> str:
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(proc.popen.stdout.readline().decode()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    return result[0] if result else ""


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


# -- profiles ---------------------------------------------------------------------------------


def top_table(collapsed: str, n: int = 30) -> str:
    """Top functions by self and by cumulative samples, from py-spy's raw (collapsed) output."""
    total = 0
    self_counts: dict[str, int] = {}
    cumulative: dict[str, int] = {}
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        total += c
        frames = [f for f in stack.split(";") if not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        self_counts[frames[-1]] = self_counts.get(frames[-1], 0) + c
        for name in {_function(f) for f in frames}:
            cumulative[name] = cumulative.get(name, 0) + c
    lines = [f"{total} samples\n", "top by self time (function (file:line)):"]
    for frame, c in sorted(self_counts.items(), key=lambda kv: -kv[1])[:n]:
        lines.append(f"  {100 * c / total:5.1f}%  {frame}")
    lines.append("\ntop by cumulative time (function (file)):")
    for frame, c in sorted(cumulative.items(), key=lambda kv: -kv[1])[:n]:
        lines.append(f"  {100 * c / total:5.1f}%  {frame}")
    return "\n".join(lines) + "\n"


def _function(frame: str) -> str:
    """'send (httpx/_client.py:1629)' -> 'send (httpx/_client.py)'."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name


# -- figures, table, files --------------------------------------------------------------------


# S8's kinds: (name, the toolgate process); each is compared with its own chat run (`-chat`).
S8_KINDS = (("post", "toolgate"), ("stream", "toolgate"), ("loop", "toolgate-calc"))


def med(values: Sequence[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def figures(raw: dict, plan: Plan) -> dict[str, dict[str, Any]]:
    """Medians over rounds of each figure, per target; added latencies per round first."""

    def runs(scenario: str, target: str) -> list[dict]:
        return raw.get(scenario, {}).get(target, [])

    def per(scenario: str, target: str, get: Callable[[dict], Any]) -> float | None:
        return med([get(m) for m in runs(scenario, target)])

    def added(scenario: str, target: str, key: str) -> float | None:
        mine, direct = runs(scenario, target), runs(scenario, "direct")
        pairs = [(a[key]["p50"], b[key]["p50"]) for a, b in zip(mine, direct) if None not in (a[key]["p50"], b[key]["p50"])]
        return med([a - b for a, b in pairs])

    def added_per_round(scenario: str, target: str, key: str) -> list[float | None]:
        return [
            None if None in (a[key]["p50"], b[key]["p50"]) else a[key]["p50"] - b[key]["p50"]
            for a, b in zip(runs(scenario, target), runs(scenario, "direct"))
        ]

    def paired(a: list, b: list, how: Callable[[float, float], float]) -> float | None:
        """Median over rounds (S8: over its pairs) of a same-round comparison: drift between rounds cancels."""
        return med([how(x, y) for x, y in zip(a, b) if x is not None and y not in (None, 0)])

    def values(scenario: str, target: str, get: Callable[[dict], Any]) -> list:
        return [get(m) for m in runs(scenario, target)]

    ratio = lambda x, y: x / y  # noqa: E731
    rps = lambda m: m["rps"]  # noqa: E731
    cpu = lambda m: m["cpu_ms_per_request"]  # noqa: E731
    def against(floor: str) -> dict[str, float | None]:
        added_tg = {k: added_per_round(k, "toolgate", key) for k, key in (("S1", "latency_ms"), ("S3-ttfb", "ttfb_ms"))}
        added_fl = {k: added_per_round(k, floor, key) for k, key in (("S1", "latency_ms"), ("S3-ttfb", "ttfb_ms"))}
        return {
            "s1_added": paired(added_tg["S1"], added_fl["S1"], ratio),
            "s2_rps": paired(values("S2", "toolgate", rps), values("S2", floor, rps), ratio),
            "s2_cpu": paired(values("S2", "toolgate", cpu), values("S2", floor, cpu), ratio),
            "s3_added_ttfb_minus_floor": paired(added_tg["S3-ttfb"], added_fl["S3-ttfb"], lambda x, y: x - y),
            "s3_added_ttfb": paired(added_tg["S3-ttfb"], added_fl["S3-ttfb"], ratio),
            "s3_cpu": paired(values("S3-cpu", "toolgate", cpu), values("S3-cpu", floor, cpu), ratio),
            "s3p_cpu": paired(values("S3-paced", "toolgate", cpu), values("S3-paced", floor, cpu), ratio),
            "s1_p99": paired(values("S1", "toolgate", lambda m: m["latency_ms"]["p99"]), values("S1", floor, lambda m: m["latency_ms"]["p99"]), ratio),
            "s2log_cpu": paired(values("S2-log", "toolgate-log", cpu), values("S2", floor, cpu), ratio),
        }

    f: dict[str, dict[str, Any]] = {
        "paired": {
            **against("floor"),
            "log_rps": paired(values("S2-log", "toolgate-log", rps), values("S2", "toolgate", rps), ratio),
            "log_cpu": paired(values("S2-log", "toolgate-log", cpu), values("S2", "toolgate", cpu), ratio),
            "s6_rps": paired(values("S6", "toolgate", rps), values("S6", "floor", rps), ratio),
        },
        "paired_aiohttp": against("floor-aiohttp"),
    }
    for t in ("direct", "floor", "floor-aiohttp", "toolgate"):
        f[t] = {
            "s1_p50_ms": per("S1", t, lambda m: m["latency_ms"]["p50"]),
            "s1_added_ms": added("S1", t, "latency_ms") if t != "direct" else 0.0,
            "s2_rps": per("S2", t, lambda m: m["rps"]),
            "s2_cpu_ms": per("S2", t, lambda m: m["cpu_ms_per_request"]),
            "s2_p50_ms": per("S2", t, lambda m: m["latency_ms"]["p50"]),
            "s2_util": per("S2", t, lambda m: m["target_cpu_util"]),
            "s2_side_util": per("S2", t, lambda m: m["fake_and_loadgen_cpu_util"]),
            "s3_ttfb_ms": per("S3-ttfb", t, lambda m: m["ttfb_ms"]["p50"]),
            "s3_added_ttfb_ms": added("S3-ttfb", t, "ttfb_ms") if t != "direct" else 0.0,
            "s3_cpu_ms": per("S3-cpu", t, lambda m: m["cpu_ms_per_request"]),
            "s3_rps": per("S3-cpu", t, lambda m: m["rps"]),
            "s3_events": per("S3-cpu", t, lambda m: m.get("events_per_request")),
            "s3_frames": per("S3-cpu", t, lambda m: m.get("frames_per_request")),
            "s1_p99_ms": per("S1", t, lambda m: m["latency_ms"]["p99"]),
            "s3p_cpu_ms": per("S3-paced", t, lambda m: m["cpu_ms_per_request"]),
            "s3p_rps": per("S3-paced", t, lambda m: m["rps"]),
            "s3p_events": per("S3-paced", t, lambda m: m.get("events_per_request")),
            "s3p_frames": per("S3-paced", t, lambda m: m.get("frames_per_request")),
        }
    f["toolgate-log"] = {
        "s2_rps": per("S2-log", "toolgate-log", lambda m: m["rps"]),
        "s2_cpu_ms": per("S2-log", "toolgate-log", lambda m: m["cpu_ms_per_request"]),
    }
    for gw in ("toolgate-calc", "toolgate-mcp"):
        for lat in ("0ms", "50ms"):
            f[f"{gw}-{lat}"] = {
                "rps": per(f"S4-{lat}", gw, lambda m: m["rps"]),
                "cpu_ms": per(f"S4-{lat}", gw, lambda m: m["cpu_ms_per_request"]),
                "p50_ms": per(f"S4-{lat}", gw, lambda m: m["latency_ms"]["p50"]),
                "watched": (runs(f"S4-{lat}", gw) or [{}])[-1].get("watched"),
            }
    f["toolgate-nap"] = {
        "p50_ms": per("S7", "toolgate-nap", lambda m: m["latency_ms"]["p50"]),
        "p90_ms": per("S7", "toolgate-nap", lambda m: m["latency_ms"]["p90"]),
        "watched": (runs("S7", "toolgate-nap") or [{}])[-1].get("watched"),
    }
    f["toolgate-nap-mcp"] = {
        "p50_ms": per("S7", "toolgate-nap-mcp", lambda m: m["latency_ms"]["p50"]),
        "p90_ms": per("S7", "toolgate-nap-mcp", lambda m: m["latency_ms"]["p90"]),
        "watched": (runs("S7", "toolgate-nap-mcp") or [{}])[-1].get("watched"),
    }
    # S8: each Responses figure against the chat run beside it (same process, same shape).
    f["responses"] = {}
    for kind, gw in S8_KINDS:
        for tag in ("store", "nostore"):
            key = f"S8-{kind}-{tag}"
            f["responses"][f"{kind}-{tag}"] = {
                "rps": per(key, gw, rps), "cpu_ms": per(key, gw, cpu), "chat_rps": per(key + "-chat", gw, rps), "chat_cpu_ms": per(key + "-chat", gw, cpu),
                "rps_ratio": paired(values(key, gw, rps), values(key + "-chat", gw, rps), ratio),
                "cpu_ratio": paired(values(key, gw, cpu), values(key + "-chat", gw, cpu), ratio),
                "watched": (runs(key, gw) or [{}])[-1].get("watched"),
            }  # fmt: skip
    for t in ("toolgate", "floor", "floor-aiohttp"):
        s5 = runs("S5", t)
        f[f"{t}-s5"] = {
            "per_stream_kib": med([m["per_stream"] / 1024 for m in s5]),
            "idle_mib": med([m["rss_idle"] / 2**20 for m in s5]),
            "fresh_mib": med([m["rss_fresh"] / 2**20 for m in s5]),
            "peak_mib": med([m["rss_peak"] / 2**20 for m in s5]),
            "served": min((m["served"] for m in s5), default=None),
            "opened": min((m["opened"] for m in s5), default=None),
            "open_s": med([m["open_s"] for m in s5]),
        }
        f[f"{t}-2w"] = {
            "rps": per("S6", t, lambda m: m["rps"]),
            "cpu_ms": per("S6", t, lambda m: m["cpu_ms_per_request"]),
        }
    return f


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b not in (None, 0) else None


def _met(ok: bool | None) -> str:
    return "—" if ok is None else ("yes" if ok else "**NO**")


def rows(f: dict, plan: Plan, failures: dict[str, str]) -> list[dict[str, Any]]:
    """The table: scenario, what, toolgate, floor, ratio, target, met, aiohttp floor, direct."""
    tg, fl, fa, d, pr = f["toolgate"], f["floor"], f["floor-aiohttp"], f["direct"], f["paired"]
    out: list[dict[str, Any]] = []

    def add(scenario, what, mine, floor, target, ok, ref=None, direct=None, ratio="auto", unit=""):
        out.append({
            "scenario": scenario, "what": what, "unit": unit, "toolgate": mine, "floor": floor,
            "ratio": _ratio(mine, floor) if ratio == "auto" else ratio, "target": target, "met": ok,
            "aiohttp_floor": ref, "direct": direct,
        })  # fmt: skip

    def le(a, b):
        return None if a is None or b is None else a <= b

    def ge(a, b):
        return None if a is None or b is None else a >= b

    add("S1", "added p50 latency, c=1 (ms)", tg["s1_added_ms"], fl["s1_added_ms"], "≤ 1.1× floor",
        le(pr["s1_added"], 1.1), fa["s1_added_ms"], 0.0, ratio=pr["s1_added"])
    add("S1", "p50 latency, c=1 (ms)", tg["s1_p50_ms"], fl["s1_p50_ms"], "", None, fa["s1_p50_ms"], d["s1_p50_ms"])
    add("S2", f"req/s, c={plan.c_s2}", tg["s2_rps"], fl["s2_rps"], "≥ 0.9× floor", ge(pr["s2_rps"], 0.9), fa["s2_rps"], d["s2_rps"],
        ratio=pr["s2_rps"])
    add("S2", "CPU per request (ms)", tg["s2_cpu_ms"], fl["s2_cpu_ms"], "≤ 0.3 ms", le(tg["s2_cpu_ms"], 0.3), fa["s2_cpu_ms"],
        ratio=pr["s2_cpu"])
    add("S2", "p50 latency under load (ms)", tg["s2_p50_ms"], fl["s2_p50_ms"], "", None, fa["s2_p50_ms"], d["s2_p50_ms"])
    add("S2", "gateway core busy / core 1 (fake + loadgen) busy",
        _pct_pair(tg["s2_util"], tg["s2_side_util"]), _pct_pair(fl["s2_util"], fl["s2_side_util"]), "", None,
        _pct_pair(fa["s2_util"], fa["s2_side_util"]), _pct_pair(None, d["s2_side_util"]), ratio=None)
    log = f["toolgate-log"]
    add("S2+log", "req/s with log_requests = true (floor column: toolgate without)", log["s2_rps"], tg["s2_rps"],
        "(cost of the access log)", None, ratio=pr["log_rps"])
    add("S2+log", "CPU per request with the log (ms) (floor column: toolgate without)", log["s2_cpu_ms"], tg["s2_cpu_ms"], "", None,
        ratio=pr["log_cpu"])
    over = pr["s3_added_ttfb_minus_floor"]
    add("S3", f"added time to first byte, 100-chunk stream, c=1 (ms); toolgate − floor = {_fmt(over)} ms", tg["s3_added_ttfb_ms"],
        fl["s3_added_ttfb_ms"], "≤ floor + 0.2 ms", le(over, 0.2), fa["s3_added_ttfb_ms"], 0.0, ratio=pr["s3_added_ttfb"])
    add("S3", f"CPU per stream, c={plan.c_s3} (ms)", tg["s3_cpu_ms"], fl["s3_cpu_ms"], "≤ 1.5× floor", le(pr["s3_cpu"], 1.5),
        fa["s3_cpu_ms"], ratio=pr["s3_cpu"])
    add("S3", f"streams/s, c={plan.c_s3}", tg["s3_rps"], fl["s3_rps"], "", None, fa["s3_rps"], d["s3_rps"])
    add("S3", "SSE events / HTTP chunks per stream, 100 chunks in one burst", _pair(tg["s3_events"], tg["s3_frames"]),
        _pair(fl["s3_events"], fl["s3_frames"]), "", None, _pair(fa["s3_events"], fa["s3_frames"]), _pair(d["s3_events"], d["s3_frames"]), ratio=None)
    add("S3-paced", f"CPU per stream, chunks 1 ms apart, c={plan.c_s3} (ms)", tg["s3p_cpu_ms"], fl["s3p_cpu_ms"], "", None,
        fa["s3p_cpu_ms"], ratio=pr["s3p_cpu"])
    add("S3-paced", f"streams/s, chunks 1 ms apart, c={plan.c_s3}", tg["s3p_rps"], fl["s3p_rps"], "", None, fa["s3p_rps"], d["s3p_rps"])
    add("S3-paced", "SSE events / HTTP chunks per stream, chunks 1 ms apart", _pair(tg["s3p_events"], tg["s3p_frames"]),
        _pair(fl["s3p_events"], fl["s3p_frames"]), "", None, _pair(fa["s3p_events"], fa["s3p_frames"]), _pair(d["s3p_events"], d["s3p_frames"]), ratio=None)
    two_calls = None if fl["s2_rps"] is None else fl["s2_rps"] / 2
    ideal_50 = plan.c_s4 / 0.1
    for gw, label, target in (("toolgate-calc", "in-process `calculate`", 800), ("toolgate-mcp", "stdio MCP `add`", 400)):
        key = f"S4/{gw}"
        failed = failures.get(key) or failures.get(f"start/{gw}") or failures.get(f"S4-0ms/{gw}")
        z, fifty = f[f"{gw}-0ms"], f[f"{gw}-50ms"]
        if z["rps"] is None and failed:
            add("S4", f"{label}: NOT MEASURED — {failed[:200]}", None, None, f"≥ {target} req/s", None, ratio=None)
            continue
        add("S4", f"{label}, 2 rounds, c={plan.c_s4}, fake 0 ms: req/s (floor column: floor S2 ÷ 2)", z["rps"], two_calls,
            f"≥ {target} req/s", ge(z["rps"], target))
        add("S4", f"{label}, fake 0 ms: CPU per request (ms) (floor column: floor S2 × 2)", z["cpu_ms"],
            None if fl["s2_cpu_ms"] is None else 2 * fl["s2_cpu_ms"], "", None)
        add("S4", f"{label}, fake 50 ms: req/s (floor column: ideal, c ÷ 100 ms)", fifty["rps"], ideal_50, "", None)
    add("S5", f"RSS per open slow stream, {plan.s5_streams} open (KiB)", f["toolgate-s5"]["per_stream_kib"], f["floor-s5"]["per_stream_kib"],
        "≤ 30 KiB", le(f["toolgate-s5"]["per_stream_kib"], 30), f["floor-aiohttp-s5"]["per_stream_kib"])
    add("S5", "idle RSS after warm-up (MiB)", f["toolgate-s5"]["idle_mib"], f["floor-s5"]["idle_mib"], "≤ 60 MiB",
        le(f["toolgate-s5"]["idle_mib"], 60), f["floor-aiohttp-s5"]["idle_mib"])
    add("S5", "idle RSS fresh from start (MiB)", f["toolgate-s5"]["fresh_mib"], f["floor-s5"]["fresh_mib"], "", None, f["floor-aiohttp-s5"]["fresh_mib"])
    served = f["toolgate-s5"]["served"]
    add("S5", "streams served to [DONE]", served, f["floor-s5"]["served"], f"all {plan.s5_streams}",
        None if served is None else served == plan.s5_streams, f["floor-aiohttp-s5"]["served"], ratio=None)
    tg2, fl2 = f["toolgate-2w"]["rps"], f["floor-2w"]["rps"]
    add("S6", f"req/s with --workers 2, c={plan.c_s2}, nothing pinned (floor with 2 workers)", tg2, fl2, "≥ 1.7× toolgate S2",
        ge(tg2, None if tg["s2_rps"] is None else 1.7 * tg["s2_rps"]), ratio=pr["s6_rps"])
    add("S6", "scaling: 2 workers / 1 worker S2", _ratio(tg2, tg["s2_rps"]), _ratio(fl2, fl["s2_rps"]), "≥ 1.7", ge(_ratio(tg2, tg["s2_rps"]), 1.7))
    nap = f["toolgate-nap"]
    limit = plan.nap_ms * 1.1
    add("S7", f"request with one round of 8 parallel {plan.nap_ms} ms tool calls, p50 (ms)", nap["p50_ms"], None,
        f"≤ {limit:g} ms (not {8 * plan.nap_ms})", le(nap["p50_ms"], limit), ratio=None)
    napm = f["toolgate-nap-mcp"]
    add("S7", f"the same, 8 parallel {plan.nap_ms} ms calls on one stdio MCP session (`sleep`), p50 (ms)", napm["p50_ms"], None,
        f"≤ {limit:g} ms", le(napm["p50_ms"], limit), ratio=None)
    shapes = {
        "post": f"non-streamed pass-through, c={plan.c_s2} (vs S2)",
        "stream": f"100-chunk stream, c={plan.c_s3} (vs S3)",
        "loop": f"2-round `calculate` loop, c={plan.c_s4} (vs S4)",
    }
    for kind, _ in S8_KINDS:
        for tag, store in (("store", "store on"), ("nostore", "store: false")):
            r = f["responses"][f"{kind}-{tag}"]
            add("S8", f"Responses {shapes[kind]}, {store}: CPU per request (ms) (floor column: chat completions, same process)",
                r["cpu_ms"], r["chat_cpu_ms"], "≤ 1.2× chat", le(r["cpu_ratio"], 1.2), ratio=r["cpu_ratio"])
            add("S8", f"Responses {shapes[kind]}, {store}: req/s (floor column: chat completions)", r["rps"], r["chat_rps"], "", None,
                ratio=r["rps_ratio"])
    return out


def _le(a: float | None, b: float) -> bool | None:
    return None if a is None else a <= b


def _ge(a: float | None, b: float) -> bool | None:
    return None if a is None else a >= b


def _pair(a: float | None, b: float | None) -> str:
    return f"{_fmt(a, 1)} / {_fmt(b, 1)}"


def _pct_pair(a: float | None, b: float | None) -> str:
    return f"{_fmt(None if a is None else 100 * a, 0)}% / {_fmt(None if b is None else 100 * b, 0)}%"


def markdown(table: list[dict], f: dict, meta: dict, notes: list[str], failures: dict[str, str], plan: Plan) -> str:
    lines = [
        f"# toolgate benchmark — {meta['plan']} run, {meta['date']}",
        "",
        f"Machine: {meta['nproc']} CPUs, {meta['cpu_model']}; Linux {meta['kernel']}; Python {meta['python']}; "
        f"load generator: {meta['loadgen']}; {meta['rounds']} interleaved round(s), medians; took {meta['elapsed_s']:.0f} s; "
        f"gateway source {meta.get('gateway_source', '?')}; load average {meta.get('loadavg', '?')}"
        + (f"; only {', '.join(meta['only'])}" if meta.get("only") else "") + ".",
        "Gateway on core 0, fake upstream + load generator on core 1 (S6: nothing pinned). "
        "`log_requests = false` except in the S2+log row (its log lines go to a file). "
        "Ratio = toolgate / floor, as the median over rounds of each round's own ratio (so drift between rounds cancels).",
        "",
        "| scenario | figure | toolgate | floor (Starlette + httpx over the aiohttp transport) | ratio | target | met? | aiohttp-direct floor (ref) | direct to fake |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in table:
        lines.append(
            f"| {r['scenario']} | {r['what']} | {_fmt(r['toolgate'])} | {_fmt(r['floor'])} | "
            f"{_fmt(r['ratio']) + '×' if r['ratio'] is not None else '—'} | {r['target'] or ''} | {_met(r['met'])} | "
            f"{_fmt(r['aiohttp_floor'])} | {_fmt(r['direct'])} |"
        )
    d, tg, fa, pa = f["direct"], f["toolgate"], f["floor-aiohttp"], f["paired_aiohttp"]
    s5 = f["toolgate-s5"]["per_stream_kib"], f["floor-aiohttp-s5"]["per_stream_kib"]
    lines += [
        "",
        "Issue 11's targets, against the aiohttp-direct floor (uvicorn + Starlette + one aiohttp session, bytes passed "
        "through: the like-for-like floor, since toolgate's upstream module talks aiohttp directly); every ratio is "
        "toolgate / that floor, same run, median over rounds of each round's ratio:",
        "",
        "| scenario | figure | toolgate | aiohttp floor | ratio | target | met? |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    pr, log = f["paired"], f["toolgate-log"]
    s6 = _ratio(f["toolgate-2w"]["rps"], tg["s2_rps"])
    nap, napm = f["toolgate-nap"]["p50_ms"], f["toolgate-nap-mcp"]["p50_ms"]
    issue = [
        ("S1", "added p50 latency, c=1 (ms)", tg["s1_added_ms"], fa["s1_added_ms"], pa["s1_added"], "≤ 1.05×", _le(pa["s1_added"], 1.05)),
        ("S1", "p99 latency, c=1 (ms)", tg["s1_p99_ms"], fa["s1_p99_ms"], pa["s1_p99"], "≤ 1.5×", _le(pa["s1_p99"], 1.5)),
        ("S2", "req/s, c=64", tg["s2_rps"], fa["s2_rps"], pa["s2_rps"], "≥ 1.0×", _ge(pa["s2_rps"], 1.0)),
        ("S2", "CPU per request (ms)", tg["s2_cpu_ms"], fa["s2_cpu_ms"], pa["s2_cpu"], "", None),
        ("S2+log", "CPU per request, access log on (ms)", log["s2_cpu_ms"], fa["s2_cpu_ms"], pa["s2log_cpu"], "≤ 1.1×", _le(pa["s2log_cpu"], 1.1)),
        ("S3", "added TTFB, 100-chunk stream, c=1 (ms)", tg["s3_added_ttfb_ms"], fa["s3_added_ttfb_ms"], pa["s3_added_ttfb"], "≤ 1.2×", _le(pa["s3_added_ttfb"], 1.2)),
        ("S3", "CPU per stream, 100 chunks in one burst (ms)", tg["s3_cpu_ms"], fa["s3_cpu_ms"], pa["s3_cpu"], "≤ 1.2×", _le(pa["s3_cpu"], 1.2)),
        ("S3-paced", "CPU per stream, chunks 1 ms apart (ms)", tg["s3p_cpu_ms"], fa["s3p_cpu_ms"], pa["s3p_cpu"], "≤ 1.2×", _le(pa["s3p_cpu"], 1.2)),
        ("S5", "RSS per open stream (KiB)", s5[0], s5[1], _ratio(*s5), "≤ 1.05×", _le(_ratio(*s5), 1.05)),
        ("S6", "two workers / one worker, req/s (floor column: the httpx floor's)", s6, _ratio(f["floor-2w"]["rps"], f["floor"]["s2_rps"]), None, "≥ 1.9", _ge(s6, 1.9)),
        ("S7", "8 parallel 100 ms Python-function calls, one round, p50 (ms)", nap, None, None, "≤ 108 ms", _le(nap, 108) if plan.nap_ms == 100 else None),
        ("S7", "8 parallel 100 ms calls on one stdio MCP session, one round, p50 (ms)", napm, None, None, "≤ 108 ms",
         _le(napm, 108) if plan.nap_ms == 100 else None),
        ("S2+log", "access-log cost: req/s with it / without", log["s2_rps"], tg["s2_rps"], pr["log_rps"], "≥ 0.97×", _ge(pr["log_rps"], 0.97)),
    ]
    for scenario, what, mine, floor, ratio, target, ok in issue:
        lines.append(f"| {scenario} | {what} | {_fmt(mine)} | {_fmt(floor)} | {'—' if ratio is None else _fmt(ratio) + '×'} | {target} | {_met(ok)} |")
    headroom = _ratio(d["s2_rps"], tg["s2_rps"])
    lines += [
        "",
        f"Fake upstream headroom: direct to the fake {_fmt(d['s2_rps'])} req/s (sharing core 1 with the load generator) vs toolgate's "
        f"{_fmt(tg['s2_rps'])} req/s: {_fmt(headroom)}×; during toolgate's S2 the gateway's core was "
        f"{_fmt(None if tg['s2_util'] is None else 100 * tg['s2_util'], 0)}% busy, core 1 (fake + load generator) "
        f"{_fmt(None if tg['s2_side_util'] is None else 100 * tg['s2_side_util'], 0)}%.",
    ]
    watch = [(gw, f.get(gw, {}).get("watched")) for gw in ("toolgate-calc-0ms", "toolgate-mcp-0ms", "toolgate-nap", "toolgate-nap-mcp")]
    watch += [(f"S8 Responses {key}", r.get("watched")) for key, r in f.get("responses", {}).items() if key.startswith("loop")]
    for gw, watched in watch:
        if watched:
            lines.append(f"{gw}: response headers seen: {', '.join(f'{k} ×{v}' for k, v in sorted(watched.items()))}.")
    if notes or failures:
        lines += ["", "Notes:"]
        lines += [f"- {n}" for n in notes]
        lines += [f"- failed: `{k}`: {v[:300]}" for k, v in sorted(failures.items())]
    return "\n".join(lines) + "\n"


def _loadavg() -> str:
    """The 1/5/15-minute load averages: how busy the machine was with others' work too."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def code_version() -> str:
    """A hash of the gateway's source: a run whose start and end differ measured two versions."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted((ROOT / "gateway").rglob("*.py")):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def machine(plan: Plan, loadgen: str) -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "plan": plan.name,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadgen": loadgen,
        "rounds": plan.rounds,
    }


def update_readme(md: str) -> None:
    text = README.read_text()
    if README_START not in text or README_END not in text:
        return
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    body_md = md.replace("# toolgate benchmark — ", "Last run: ", 1)
    README.write_text(f"{head}{README_START}\n{body_md}\n{README_END}{tail}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="one short round of everything")
    group.add_argument("--smoke", action="store_true", help="tiny scale, seconds; no timing targets judged")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where latest.md/.json go")
    parser.add_argument("--loadgen", choices=("auto", "asyncio"), default="auto",
                        help="auto: wrk for plain POSTs when installed (installed when possible); asyncio: never wrk")
    parser.add_argument("--profile", action="store_true", help="py-spy profiles of toolgate under S2/S3/S4 load")
    parser.add_argument("--update-readme", action="store_true", help="paste the table into bench/README.md")
    parser.add_argument("--only", default="", metavar="S2,S3,...",
                        help="run only these scenarios (S1 S2 S2-log S3 S3-paced S4 S5 S6 S7 S8); the rest show as not measured")
    parser.add_argument("--rounds", type=int, help="rounds instead of the plan's")
    parser.add_argument("--render", type=Path, metavar="JSON", help="only re-render the table of an earlier latest.json")
    args = parser.parse_args(argv)
    plan = PLANS["smoke" if args.smoke else "quick" if args.quick else "full"]
    if args.rounds:
        plan = dataclasses.replace(plan, rounds=args.rounds)
    if args.render:
        earlier = json.loads(args.render.read_text())
        plan = Plan(**earlier["plan"])
        write(args.out, plan, earlier["meta"], earlier["raw"], earlier["notes"], earlier["failures"], args.update_readme)
        return 0

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    only = frozenset(s.strip() for s in args.only.split(",") if s.strip())
    harness = Harness(plan, args.out, args.loadgen, args.profile, only)
    os.sched_setaffinity(0, harness.side_cpus)  # this process stays off the gateway's core
    loadgen = f"wrk ({harness.wrk}) for plain POSTs, bench.load for the rest" if harness.wrk else "bench.load (asyncio) only: wrk not found"
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    version = code_version()
    load_before = _loadavg()
    try:
        raw = harness.run()
    finally:
        harness.stop_all()
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(harness.tmp, ignore_errors=True)
    meta = {**machine(plan, loadgen), "elapsed_s": harness.elapsed_s, "gateway_source": version,
            "loadavg": f"{load_before} at the start, {_loadavg()} at the end", "only": sorted(only)}
    if code_version() != version:
        harness.notes.append(
            f"gateway/ changed during this run (source hash {version} at the start, {code_version()} at the end): "
            "processes started at different times ran different code, so these figures mix versions. Run again."
        )
    write(args.out, plan, meta, raw, harness.notes, harness.failures, args.update_readme)
    return 0


def write(out: Path, plan: Plan, meta: dict, raw: dict, notes: list[str], failures: dict[str, str], readme: bool) -> None:
    """latest.md, latest.json (raw runs included), and the README's table when asked."""
    f = figures(raw, plan)
    table = rows(f, plan, failures)
    md = markdown(table, f, meta, notes, failures, plan)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.md").write_text(md)
    (out / "latest.json").write_text(json.dumps(
        {"meta": meta, "plan": asdict(plan), "figures": f, "table": table, "notes": notes, "failures": failures, "raw": raw},
        indent=1, default=str,
    ))  # fmt: skip
    if readme:
        update_readme(md)
    print(md)


if __name__ == "__main__":
    raise SystemExit(main())
