"""Runs one stdio MCP server (Linux) so that its whole process tree dies with the gateway.

    python -I -S _supervisor.py GATEWAY_PID GRACE_S /abs/server arg...

The SDK starts the command in a new session and stops it by closing stdin, then SIGTERM and
SIGKILL to that process group. That misses a server's own children (npx → node, uvx → python)
twice: when the server exits on EOF nobody signals the group, and when the gateway is
SIGKILLed nothing runs at all. So the SDK starts this script instead, which

- asks Linux for SIGTERM when the gateway dies (PR_SET_PDEATHSIG; not SIGKILL, so it can act
  on it) and becomes a subreaper, so the tree's orphans are its own children to reap;
- forks the server into a process group of its own, pipes unchanged, and drops its own
  copies of them, so EOF on stdout still means the server is gone;
- when the server exits, or the gateway is gone, SIGKILLs that group, reaps it and exits
  with the server's status;
- takes a SIGTERM while the gateway lives as the SDK's escalation: passes it to the group,
  then SIGKILLs the group after GRACE_S, before the SDK's own SIGKILL (which would reach
  only this process) is due.

Daemons that leave the group (setsid) escape, as they do the SDK. Only the standard library:
it runs without site-packages. The ppid checks close the races where a parent died before
prctl ran.
"""

import ctypes
import os
import signal
import sys
import time

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
REAP_S = 1.0


def main(args: list[str]) -> None:  # pragma: no cover - runs in the child, out of coverage's sight
    libc = ctypes.CDLL(None, use_errno=True)
    gateway, grace, argv = int(args[0]), float(args[1]), args[2:]
    group = 0  # the server's process group, once it exists

    def kill_group(sig: int) -> None:
        try:
            os.killpg(group, sig)
        except OSError:
            pass

    def on_term(signum: int, frame: object) -> None:
        if group == 0:
            os._exit(1)
        if os.getppid() != gateway:  # PR_SET_PDEATHSIG: the gateway is gone
            kill_group(signal.SIGKILL)
        else:
            kill_group(signal.SIGTERM)
            signal.setitimer(signal.ITIMER_REAL, grace)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGALRM, lambda signum, frame: kill_group(signal.SIGKILL))
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1)
    if os.getppid() != gateway:
        sys.exit(1)
    me = os.getpid()
    pid = os.fork()
    if pid == 0:
        os.setpgid(0, 0)
        # Python ignores SIGPIPE and SIGXFSZ, and exec would keep that for the server.
        for sig in (signal.SIGTERM, signal.SIGALRM, signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != me:
            os._exit(1)
        try:
            os.execv(argv[0], argv)
        except OSError as exc:
            os.write(2, f"cannot start {argv[0]}: {exc.strerror}\n".encode())
        os._exit(127)
    try:
        os.setpgid(pid, pid)
    except OSError:
        pass  # the child got there first, and may have exec'd already
    group = pid
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    status = 1
    while True:  # the server's lifetime; adopted orphans are reaped on the way
        try:
            done, code = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        if done == pid:
            status = os.waitstatus_to_exitcode(code)
            break
    kill_group(signal.SIGKILL)
    deadline = time.monotonic() + REAP_S
    while time.monotonic() < deadline:
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
            os.killpg(group, 0)
        except (ChildProcessError, ProcessLookupError):
            break
        time.sleep(0.01)
    os._exit(status if status >= 0 else 128 - status)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
