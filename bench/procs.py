"""Processes the harness starts, and what /proc says about them.

Every process is started here, pinned with ``sched_setaffinity`` (what ``taskset -c``
does), and stopped by its PID: SIGTERM, a grace period, then SIGKILL; descendants it
left behind are stopped the same way, by PID. Nothing is ever killed by name.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def cores() -> tuple[set[int], set[int]]:
    """(gateway core, core for fake and load generator); both core 0 on a one-core box."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return {available[0]}, {available[0]}
    return {available[0]}, {available[1]}


ALL_CORES = set(os.sched_getaffinity(0))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pin(pid: int, cpus: Iterable[int]) -> None:
    """Pin a running process and all its threads (``taskset -a -p``)."""
    for tid in _tids(pid):
        try:
            os.sched_setaffinity(tid, set(cpus))
        except OSError:
            pass


def _tids(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def children(pid: int) -> list[int]:
    out = []
    for tid in _tids(pid):
        try:
            out += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except OSError:
            pass
    return out


def tree(pid: int) -> list[int]:
    """pid and all its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children(p)
    return out


def cpu_s(pids: Iterable[int]) -> float:
    """utime + stime of the processes, in seconds (/proc/PID/stat fields 14 and 15)."""
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])
    return total * TICK_S


def rss_bytes(pids: Iterable[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
        except OSError:
            pass
    return total


@dataclass
class Proc:
    """One started process: its name, Popen, the cores it runs on, its log file."""

    name: str
    popen: subprocess.Popen
    cpus: set[int]
    log: Path | None = None
    url: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def pids(self) -> list[int]:
        """The process and its descendants (uvicorn workers, MCP servers)."""
        return tree(self.pid)

    def cpu(self) -> float:
        return cpu_s(self.pids())

    def rss(self) -> int:
        return rss_bytes(self.pids())

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, n: int = 20) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def repin(self, cpus: set[int]) -> None:
        for pid in self.pids():
            pin(pid, cpus)


def start(name: str, argv: Sequence[str], *, cpus: set[int], env: dict | None = None, log: Path | None = None,
          stdout: int | None = None) -> Proc:
    """Start argv pinned to ``cpus``; stderr (and stdout unless given) to ``log``."""
    target = set(cpus)
    handle = open(log, "wb") if log is not None else subprocess.DEVNULL
    try:
        popen = subprocess.Popen(
            list(argv),
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=stdout if stdout is not None else handle,
            stderr=handle,
            preexec_fn=lambda: os.sched_setaffinity(0, target),
        )
    finally:
        if log is not None:
            handle.close()
    return Proc(name, popen, target, log)


def stop(proc: Proc, grace_s: float = 8.0) -> None:
    """SIGTERM the process, wait, SIGKILL it; then its leftover descendants, by PID."""
    leftovers = proc.pids()[1:]
    if proc.alive():
        proc.popen.send_signal(signal.SIGTERM)
        try:
            proc.popen.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait(5)
    deadline = time.monotonic() + 3
    for pid in leftovers:
        while _exists(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _exists(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    if proc.popen.stdout is not None:
        proc.popen.stdout.close()


def _exists(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"


def wait_http(proc: Proc, url: str, timeout_s: float = 30.0, ok: Iterable[int] = (200,)) -> None:
    """Poll ``url`` until it answers one of ``ok``; fail with the log's tail if the process died."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status in ok:
                    return
                last = f"status {response.status}"
        except Exception as exc:  # not up yet
            last = repr(exc)
        time.sleep(0.05)
    raise RuntimeError(f"{proc.name} not ready at {url} after {timeout_s}s ({last}):\n{proc.log_tail()}")


class Sampler:
    """Samples RSS of some processes every ``interval_s`` in a thread; keeps the peak."""

    def __init__(self, proc: Proc, interval_s: float = 0.05) -> None:
        self.proc = proc
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.rss())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.rss())
