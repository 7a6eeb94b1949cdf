"""Where the memory of an open stream goes: tracemalloc and gc, N slow streams open against none.

    python -m bench.memtrace                  # toolgate and the aiohttp floor, 200 streams each
    python -m bench.memtrace --only toolgate -n 200 --frames 25 --top 30

Starts the fake (``slow`` chunks 1.5 s apart, so streams stay open), then each target in a
subprocess under ``tracemalloc`` (25 frames) with a SIGUSR1 handler that collects garbage and
dumps a snapshot and a count of gc-tracked objects by type. It warms the target up, snapshots
it idle, opens N slow streams (``bench.load hold``), snapshots again once all are open, and
prints the difference per stream: by allocating line (the innermost frame in this project,
uvicorn, starlette or aiohttp), by traceback, and by object type. Not part of ``bench.run``:
tracemalloc slows the target several-fold; this says *what* the bytes are, S5 says how many.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from bench import procs

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
CHAT = "/v1/chat/completions"


# -- inside the target -----------------------------------------------------------------------


def _install(out: str) -> None:
    def dump(signum: int, frame: object) -> None:
        tag = Path(out + ".tag").read_text().strip()
        gc.collect()
        garbage: collections.Counter[str] = collections.Counter()
        for obj in gc.garbage:  # cyclic garbage since the idle snapshot: what waits for the collector
            garbage[f"{type(obj).__module__}.{type(obj).__qualname__}"] += 1
        gc.garbage.clear()
        gc.set_debug(gc.DEBUG_SAVEALL if tag == "idle" else 0)
        types: collections.Counter[str] = collections.Counter()
        sizes: collections.Counter[str] = collections.Counter()
        for obj in gc.get_objects():
            name = f"{type(obj).__module__}.{type(obj).__qualname__}"
            types[name] += 1
            sizes[name] += sys.getsizeof(obj)
        try:
            walk = _one_stream() if tag == "open" else {}
        except Exception as exc:  # a measuring tool: say what went wrong, in the report
            walk = {"walk_error": repr(exc)}
        if tracemalloc.is_tracing():
            tracemalloc.take_snapshot().dump(f"{out}.{tag}.snap")
        Path(f"{out}.{tag}.json").write_text(json.dumps({"count": types, "size": sizes, "garbage": garbage, **walk, **_allocators()}))
        Path(f"{out}.{tag}.done").write_text("")

    signal.signal(signal.SIGUSR1, dump)


_HUBS = ("AbstractEventLoop", "Loop", "Server", "Config", "ServerState", "Starlette", "ClientSession", "TCPConnector",
         "Runtime", "Generation", "Settings", "UpstreamClient", "Toolbox", "Logger", "ASGIApp", "Router")  # fmt: skip


def _reach(root: object) -> dict[int, object]:
    """Objects reachable from `root`, not through modules, classes, functions' globals or the
    process-wide hubs (the loop, the server, the app, the session): one stream's objects, and
    the shared ones it points at (taken out by comparing two streams)."""
    import types

    seen: dict[int, object] = {}
    stack = [root]
    while stack and len(seen) < 200_000:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (types.ModuleType, type, types.CodeType, types.FrameType)):
            continue
        if any(c.__name__ in _HUBS for c in type(obj).__mro__):
            continue
        if isinstance(obj, (set, frozenset)) and len(obj) > 8:
            continue  # the server's sets of every connection and task: shared, and the way to every other stream
        seen[id(obj)] = obj
        if isinstance(obj, types.FunctionType):
            stack.extend(c for c in (obj.__closure__ or ()))  # a closure's cells, not its globals
            continue
        stack.extend(gc.get_referents(obj))
    return seen


def _one_stream() -> dict[str, object]:
    """One open stream's own objects: reachable from its request task and not from another's."""
    import asyncio

    loop = asyncio._get_running_loop()  # the signal handler runs on the loop's thread, between its callbacks
    tasks = [t for t in asyncio.all_tasks(loop) if getattr(t.get_coro(), "__qualname__", "").endswith("run_asgi")] if loop else []
    if len(tasks) < 2:
        names = collections.Counter(getattr(t.get_coro(), "__qualname__", "?") for t in asyncio.all_tasks(loop)) if loop else {}
        return {"walk_error": f"fewer than two request tasks (loop {loop!r}; tasks {dict(names)})"}
    a, b = _reach(tasks[0]), _reach(tasks[1])
    own = [o for k, o in a.items() if k not in b]
    by_type: collections.Counter[str] = collections.Counter()
    sizes: collections.Counter[str] = collections.Counter()
    for obj in own:
        name = f"{type(obj).__module__}.{type(obj).__qualname__}"
        by_type[name] += 1
        sizes[name] += sys.getsizeof(obj)
    return {"walk_count": by_type, "walk_size": sizes, "walk_reached": [len(a), len(b)]}


def _allocators() -> dict[str, int]:
    """RSS, pymalloc's arenas against the blocks in use, and glibc malloc's heap against what is in use."""
    import ctypes
    import re

    found: dict[str, int] = {}
    status = Path("/proc/self/status").read_text()
    found["rss"] = int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) * 1024  # type: ignore[union-attr]
    fd = os.dup(2)
    with tempfile.TemporaryFile("w+") as f:
        os.dup2(f.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(fd, 2)
            os.close(fd)
        f.seek(0)
        text = f.read()
    for key, pattern in (("pymalloc_arenas", r"# arenas allocated current\s*=\s*([\d,]+)"),
                         ("pymalloc_used", r"# bytes in allocated blocks\s*=\s*([\d,]+)"),
                         ("pymalloc_free", r"# bytes in available blocks\s*=\s*([\d,]+)"),
                         ("pymalloc_unused_pools", r"unused pools \* 16384\s*=\s*([\d,]+)")):  # fmt: skip
        m = re.search(pattern, text)
        if m:
            found[key] = int(m.group(1).replace(",", ""))

    class Mallinfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = Mallinfo2
        info = libc.mallinfo2()
        found.update(malloc_heap=info.arena, malloc_mmap=info.hblkhd, malloc_used=info.uordblks, malloc_free=info.fordblks)
    except (OSError, AttributeError):
        pass
    return found


def _target_main(argv: list[str]) -> None:
    out, kind, rest = argv[0], argv[1], argv[2:]
    if os.environ.get("MEMTRACE_FRAMES", "25") != "0":
        tracemalloc.start(int(os.environ.get("MEMTRACE_FRAMES", "25")))
    _install(out)
    if kind == "toolgate":
        from gateway.cli import main

        main(rest)
    else:
        sys.argv = ["bench.floor", *rest]
        from bench.floor import main as floor_main

        floor_main()


# -- the driver ------------------------------------------------------------------------------


def _body(model: str, prompt_bytes: int = 0) -> bytes:
    text = "Hello there, how are you?" + " lorem" * (prompt_bytes // 6)
    return json.dumps({"model": model, "stream": True, "messages": [{"role": "user", "content": text}]}).encode()


def _snap(proc: subprocess.Popen, out: str, tag: str) -> None:
    Path(out + ".tag").write_text(tag)
    done = Path(f"{out}.{tag}.done")
    os.kill(proc.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 120
    while not done.exists():
        if time.monotonic() > deadline:
            raise RuntimeError("no snapshot in 120 s")
        time.sleep(0.1)


def _warm(url: str, model: str, n: int) -> None:
    from bench.load import main as _  # noqa: F401  (import check only)

    with tempfile.NamedTemporaryFile("wb", suffix=".json", delete=False) as f:
        f.write(json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}).encode())
    for stream in (False, True):
        body = json.loads(Path(f.name).read_bytes())
        body["stream"] = stream
        Path(f.name).write_bytes(json.dumps(body).encode())
        subprocess.run([PY, "-m", "bench.load", "closed", "--url", url, "--body", f.name, "-c", "4", "--duration", "1", "--warmup", "0"],
                       check=True, capture_output=True, timeout=60)  # fmt: skip


def _interesting(frame: tracemalloc.Frame) -> bool:
    name = frame.filename
    return any(part in name for part in ("/gateway/", "/uvicorn/", "/starlette/", "/aiohttp/", "/bench/floor", "/asyncio/", "/httptools", "/yarl/", "/multidict/"))


def allocators(out: str, n: int) -> None:
    before = json.loads(Path(f"{out}.idle.json").read_text())
    after = json.loads(Path(f"{out}.open.json").read_text())
    parts = []
    for key in ("rss", "pymalloc_used", "pymalloc_free", "pymalloc_unused_pools", "malloc_used", "malloc_free", "malloc_mmap"):
        if key in after and key in before:
            parts.append(f"{key} {(after[key] - before[key]) / n / 1024:+.2f}")
    print("  per stream (KiB): " + ", ".join(parts))


def walk(out: str, top: int) -> None:
    after = json.loads(Path(f"{out}.open.json").read_text())
    sizes = collections.Counter(after.get("walk_size", {}))
    counts = after.get("walk_count", {})
    if not sizes:
        print(f"  (no walk: {after.get('walk_error', '')} reached {after.get('walk_reached')})")
        return
    print(f"  one stream's own objects (gc.get_referents walk from its request task, less what a second stream's"
          f" walk also reaches; sys.getsizeof, shallow): {sum(counts.values())} objects, {sum(sizes.values()) / 1024:.2f} KiB")
    for name, size in sizes.most_common(top):
        print(f"    {counts[name]:4d}  {size:6d} B  {name}")


def report(out: str, n: int, top: int) -> dict:
    allocators(out, n)
    walk(out, top)
    if not Path(f"{out}.idle.snap").exists():
        return {}
    idle = tracemalloc.Snapshot.load(f"{out}.idle.snap")
    held = tracemalloc.Snapshot.load(f"{out}.open.snap")
    skip = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen importlib._bootstrap>")]
    idle, held = idle.filter_traces(skip), held.filter_traces(skip)
    total = sum(s.size for s in held.statistics("filename")) - sum(s.size for s in idle.statistics("filename"))
    print(f"  tracemalloc: {total / n / 1024:.2f} KiB per stream ({total / 1024:.0f} KiB for {n})")

    # by the first frame (innermost) that is in a package we care about, and the line that allocated
    lines: collections.Counter[str] = collections.Counter()
    counts: collections.Counter[str] = collections.Counter()
    for stat in held.compare_to(idle, "traceback"):
        tb = stat.traceback
        frames = list(reversed(tb))  # innermost first (a Traceback runs from the oldest frame)
        alloc = frames[0] if frames else None
        where = next((f for f in frames if _interesting(f)), alloc)
        own = next((f for f in frames if "/gateway/" in f.filename or "/bench/floor" in f.filename), None)
        key = f"{_short(alloc)}  <-  {_short(where)}" + (f"  <-  {_short(own)}" if own and own is not where else "")
        lines[key] += stat.size_diff
        counts[key] += stat.count_diff
    groups: collections.Counter[str] = collections.Counter()
    for stat in held.compare_to(idle, "traceback"):
        groups[_component(list(reversed(stat.traceback)))] += stat.size_diff
    print("  by component (the innermost frame outside asyncio and the standard library; bytes per stream):")
    for name, size in groups.most_common():
        if abs(size / n) >= 16:
            print(f"    {size / n:8.0f} B  {name}")
    print(f"  by allocating line <- first frame in a web package <- first frame in the app (bytes per stream, blocks per stream):")
    for key, size in lines.most_common(top):
        if size / n < 16:
            break
        print(f"    {size / n:8.0f} B  {counts[key] / n:5.1f}  {key}")
    before = json.loads(Path(f"{out}.idle.json").read_text())
    after = json.loads(Path(f"{out}.open.json").read_text())
    garbage = collections.Counter(after.get("garbage", {}))
    print(f"  cyclic garbage made while the streams opened, per stream: {sum(garbage.values()) / n:.1f} objects;"
          f" {', '.join(f'{k} {v / n:.1f}' for k, v in garbage.most_common(12))}")
    print("  gc-tracked objects per stream, by type (count, getsizeof bytes; shallow):")
    diff = {k: (after["count"].get(k, 0) - before["count"].get(k, 0), after["size"].get(k, 0) - before["size"].get(k, 0)) for k in after["count"]}
    for name, (count, size) in sorted(diff.items(), key=lambda kv: -kv[1][1])[:top]:
        if count / n < 0.5:
            continue
        print(f"    {count / n:6.1f}  {size / n:8.0f} B  {name}")
    return {"tracemalloc_per_stream": total / n}


_PACKAGES = (("/gateway/", None), ("/bench/floor", "the floor's handler"), ("/starlette/", "Starlette"), ("/anyio/", "Starlette (anyio)"),
             ("/uvicorn/", "uvicorn"), ("/aiohttp/", "aiohttp client"), ("/multidict/", "aiohttp client"), ("/yarl/", "aiohttp client"))  # fmt: skip


def _component(frames: list[tracemalloc.Frame]) -> str:
    if frames and frames[0].filename.endswith("asyncio/runners.py"):
        return "event loop (uvloop's C code: transports, sockets, handles)"
    for frame in frames:
        for marker, name in _PACKAGES:
            if marker in frame.filename:
                return name or "toolgate " + frame.filename.split("/gateway/", 1)[1]
    return "other"


def _short(frame: tracemalloc.Frame | None) -> str:
    if frame is None:
        return "?"
    name = frame.filename
    for marker in ("site-packages/", "/lib/python3", "/work/wt/", "/work/main/"):
        if marker in name:
            name = name.split(marker, 1)[1]
    return f"{name}:{frame.lineno}"


def run_one(kind: str, fake_base: str, n: int, top: int, workdir: Path, frames: int = 25, prompt_bytes: int = 0) -> None:
    port = procs.free_port()
    out = str(workdir / kind)
    if kind == "toolgate":
        rest = ["serve", "--config", str(ROOT / "bench/configs/passthrough.toml"), "--port", str(port), "--log-level", "warning"]
        model, warm = "bench-slow", "bench"
    else:
        rest = ["--port", str(port), "--upstream", fake_base, "--client", "aiohttp"]
        model, warm = "slow", "fake-model"
    env = {**os.environ, "MEMTRACE_FRAMES": str(frames), "TOOLGATE_UPSTREAM_URL": fake_base, "PYTHONPATH": str(ROOT), "TOOLGATE_API_KEYS": "",
           "TOOLGATE_STORE_URL": f"sqlite:///{workdir}/store.db"}  # fmt: skip
    proc = subprocess.Popen([PY, "-m", "bench.memtrace", "--target", out, kind, *rest], env=env, cwd=ROOT,
                            stdout=open(f"{out}.log", "w"), stderr=subprocess.STDOUT)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        import urllib.request

        while True:
            try:
                urllib.request.urlopen(url + "/healthz", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"{kind} did not start: {Path(out + '.log').read_text()[-2000:]}")
                time.sleep(0.2)
        _warm(url + CHAT, warm, 4)
        time.sleep(0.5)
        _snap(proc, out, "idle")
        body = workdir / f"{kind}-body.json"
        body.write_bytes(_body(model, prompt_bytes))
        t0 = time.monotonic()
        hold = subprocess.Popen([PY, "-m", "bench.load", "hold", "--url", url + CHAT, "--body", str(body), "-n", str(n),
                                 "--open-timeout", "60", "--timeout", "120"], stdout=subprocess.PIPE, text=True, cwd=ROOT)  # fmt: skip
        assert hold.stdout is not None
        for line in hold.stdout:
            if line.startswith("OPEN"):
                print(f"  hold: {line.strip()} after {time.monotonic() - t0:.1f} s")
                time.sleep(3)
                _snap(proc, out, "open")
                print(f"  snapshot taken {time.monotonic() - t0:.1f} s after the first stream opened")
                break
        hold.kill()
        hold.wait()
        print(f"{kind}: {n} slow streams open")
        report(out, n, top)
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--target":
        _target_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(prog="python -m bench.memtrace", description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=200)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--only", choices=("toolgate", "floor"))
    parser.add_argument("--slow-chunk-ms", type=float, default=1500)
    parser.add_argument("--frames", type=int, default=25, help="tracemalloc frames; 0: no tracemalloc (RSS and allocator figures only)")
    parser.add_argument("--prompt-bytes", type=int, default=0, help="a user message this long (what a long history costs per stream)")
    parser.add_argument("--report", metavar="DIR", help="only report again on the snapshots an earlier run left in DIR")
    args = parser.parse_args()
    if args.report:
        for kind in ("toolgate", "floor"):
            if args.only in (None, kind) and Path(args.report, f"{kind}.open.json").exists():
                print(f"{kind}: {args.n} slow streams open")
                report(str(Path(args.report, kind)), args.n, args.top)
        return
    workdir = Path(tempfile.mkdtemp(prefix="memtrace-"))
    print(f"snapshots in {workdir}", file=sys.stderr)
    fake = subprocess.Popen([PY, "-m", "bench.fake", "--port", "0", "--chunks", "100", "--slow-chunk-ms", f"{args.slow_chunk_ms:g}"],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)  # fmt: skip
    try:
        assert fake.stdout is not None
        base = fake.stdout.readline().strip()
        for kind in ("toolgate", "floor"):
            if args.only in (None, kind):
                run_one(kind, base, args.n, args.top, workdir, args.frames, args.prompt_bytes)
    finally:
        fake.terminate()
        fake.wait(10)


if __name__ == "__main__":
    main()
