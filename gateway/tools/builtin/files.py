"""``read_file`` and ``list_dir``: inside configured roots only.

A path is resolved (symlinks included) and must then lie inside a root,
compared by components, so ``/data2`` is not inside ``/data``. Only regular
files are read, and the file type is checked both before and after a
non-blocking open, so a FIFO or device can neither block nor be read. Errors
name only the path the model gave, never where a symlink pointed.

Hidden files are not served unless the tool's table says ``dotfiles = true``:
a path with a component starting with ``.`` below the root (``.env``,
``.git/config``), as given or as resolved, is refused, and listings leave such
entries out. That is where tokens live, and a model has no need to see them.
"""

from __future__ import annotations

import codecs
import os
import stat
from pathlib import Path
from typing import Any

from gateway.tools.base import Tool, ToolError
from gateway.tools.builtin import Options
from gateway.tools.workers import WORKERS, WorkersBusy

# Pseudo-filesystems: "regular" files there are live kernel state (/proc/self/environ).
FORBIDDEN = tuple(Path(p) for p in ("/proc", "/sys", "/dev"))
OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _hidden_in(parts: tuple[str, ...]) -> bool:
    return any(part.startswith(".") and part not in (".", "..") for part in parts)


class Roots:
    """The directories a tool may see, and path resolution against them."""

    def __init__(self, roots: list[Path], *, dotfiles: bool = False) -> None:
        self.roots = roots
        self.dotfiles = dotfiles

    def hidden(self, path: Path, root: Path) -> bool:
        """Whether ``path`` (inside ``root``) is a dotfile or lies in a dot-directory."""
        return not self.dotfiles and _hidden_in(path.relative_to(root).parts)

    def _hidden_as_given(self, given: str) -> bool:
        # A dot-named link to a visible file is still a hidden name.
        if self.dotfiles:
            return False
        path = Path(given)
        if path.is_absolute():
            below = [path.relative_to(r) for r in self.roots if path.is_relative_to(r)]
            return _hidden_in(below[0].parts if below else path.parts)
        return _hidden_in(path.parts)

    def resolve(self, given: Any) -> tuple[Path, Path]:
        """``(real path, its root)`` for a path the model gave; ``ToolError`` if outside."""
        if not isinstance(given, str):
            raise ToolError("path must be a string")
        if "\x00" in given:
            raise ToolError("path must not contain NUL bytes")
        shown = given if len(given) <= 200 else given[:200] + "..."
        candidates = [Path(given)] if os.path.isabs(given) else [root / given for root in self.roots]
        for candidate in candidates:
            real = Path(os.path.realpath(candidate))
            root = next((r for r in self.roots if _inside(real, r)), None)
            if root is None or any(_inside(real, f) for f in FORBIDDEN):
                raise ToolError(f"path {shown!r} is outside the allowed directories")
            if os.path.lexists(real) or candidate is candidates[-1]:
                if self._hidden_as_given(given) or self.hidden(real, root):
                    raise ToolError(f"path {shown!r} is hidden (names starting with '.' are not served)")
                return real, root
        raise ToolError(f"path {shown!r} is outside the allowed directories")  # pragma: no cover

    def display(self, real: Path, root: Path) -> str:
        return str(real) if len(self.roots) > 1 else (str(real.relative_to(root)) or ".")


def _not_found(given: str) -> ToolError:
    return ToolError(f"no such file or directory: {given!r}")


def _open(real: Path, root: Path, given: str, flags: int, roots: Roots | None = None) -> int:
    """Open ``real`` and check where the open descriptor really is: a directory on the
    way could have been swapped for a symlink since ``realpath`` looked at it."""
    try:
        fd = os.open(real, flags)
    except OSError:
        raise ToolError(f"cannot open {given!r}") from None
    try:
        opened = Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:  # no /proc: the stat comparisons below still apply
        return fd
    if not _inside(opened, root):
        os.close(fd)
        raise ToolError(f"path {given!r} is outside the allowed directories")
    if roots is not None and roots.hidden(opened, root):
        os.close(fd)
        raise ToolError(f"path {given!r} is hidden (names starting with '.' are not served)")
    return fd


def read_text(roots: Roots, given: str, max_bytes: int) -> str:
    real, root = roots.resolve(given)
    try:
        before = os.stat(real)
    except FileNotFoundError:
        raise _not_found(given) from None
    if stat.S_ISDIR(before.st_mode):
        raise ToolError(f"{given!r} is a directory; use list_dir")
    if not stat.S_ISREG(before.st_mode):
        raise ToolError(f"{given!r} is not a regular file")
    fd = _open(real, root, given, OPEN_FLAGS, roots)
    with os.fdopen(fd, "rb") as file:
        after = os.fstat(fd)
        # The path may have been swapped between stat and open: trust only the open file.
        if not stat.S_ISREG(after.st_mode) or (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
            raise ToolError(f"{given!r} is not a regular file")
        data = file.read(max_bytes + 1)
    truncated = len(data) > max_bytes
    data = data[:max_bytes]
    if b"\x00" in data[:8192]:
        raise ToolError(f"{given!r} looks like a binary file; only text files can be read")
    text = codecs.getincrementaldecoder("utf-8")(errors="replace").decode(data, final=not truncated)
    if truncated:
        text += f"\n\n(truncated: the file is {after.st_size} bytes; only the first {max_bytes} were read)"
    return text


def list_entries(roots: Roots, given: str, max_entries: int) -> str:
    real, root = roots.resolve(given)
    if not os.path.lexists(real):
        raise _not_found(given)
    if not os.path.isdir(real):
        raise ToolError(f"{given!r} is not a directory")
    fd = _open(real, root, given, OPEN_FLAGS | os.O_DIRECTORY, roots)
    try:
        with os.scandir(fd) as scan:  # entries stat through fd: describe them before closing it
            entries = sorted((e for e in scan if roots.dotfiles or not e.name.startswith(".")), key=lambda e: e.name)
            lines = [f"{roots.display(real, root)}:", *map(_describe, entries[:max_entries])]
    except OSError:
        raise ToolError(f"cannot list {given!r}") from None
    finally:
        os.close(fd)
    if len(entries) > max_entries:
        lines.append(f"... and {len(entries) - max_entries} more")
    if not entries:
        lines.append("(empty)")
    return "\n".join(lines)


def _describe(entry: os.DirEntry[str]) -> str:
    if entry.is_symlink():
        return f"{entry.name}@"  # where it points is not ours to tell
    if entry.is_dir(follow_symlinks=False):
        return f"{entry.name}/"
    if entry.is_file(follow_symlinks=False):
        return f"{entry.name} ({entry.stat(follow_symlinks=False).st_size} bytes)"
    return f"{entry.name} (special file)"


def _where(roots: Roots) -> str:
    hidden = "" if roots.dotfiles else " Hidden files (names starting with '.') are not served."
    return ", ".join(str(r) for r in roots.roots) + "." + hidden


class ReadFile(Tool):
    annotations = {"readOnlyHint": True, "idempotentHint": True, "openWorldHint": False}

    def __init__(self, roots: Roots, *, max_bytes: int = 256 << 10) -> None:
        super().__init__(
            "read_file",
            f"Read a text file. Paths are relative to, or absolute inside: {_where(roots)}",
            {
                "type": "object",
                "properties": {"path": {"type": "string", "description": "The file to read."}},
                "required": ["path"],
                "additionalProperties": False,
            },
        )
        self.roots = roots
        self.max_bytes = max_bytes

    async def call(self, arguments: dict[str, Any]) -> str:
        return await _off_loop(read_text, self.roots, arguments.get("path"), self.max_bytes)


class ListDir(Tool):
    annotations = {"readOnlyHint": True, "idempotentHint": True, "openWorldHint": False}

    def __init__(self, roots: Roots, *, max_entries: int = 1000) -> None:
        super().__init__(
            "list_dir",
            f"List a directory ('name/' is a directory, 'name@' a link). Paths are relative to, "
            f"or absolute inside: {_where(roots)}",
            {
                "type": "object",
                "properties": {"path": {"type": "string", "description": "The directory; default '.'."}},
                "additionalProperties": False,
            },
        )
        self.roots = roots
        self.max_entries = max_entries

    async def call(self, arguments: dict[str, Any]) -> str:
        path = arguments.get("path") or "."
        return await _off_loop(list_entries, self.roots, path, self.max_entries)


def _roots(opts: Options) -> Roots:
    roots = []
    for given in opts.strings("roots", required=True):
        real = Path(os.path.realpath(given))
        if not os.path.isabs(given) or not real.is_dir():
            opts.problem("roots", f"{given!r}: expected an absolute path to an existing directory")
        elif any(_inside(real, f) for f in FORBIDDEN):
            opts.problem("roots", f"{given!r}: /proc, /sys and /dev cannot be roots")
        else:
            roots.append(real)
    if not roots and opts.ok:
        opts.problem("roots", "expected at least one directory")
    return Roots(roots, dotfiles=opts.boolean("dotfiles", False))


def build_read_file(opts: Options) -> ReadFile | None:
    roots = _roots(opts)
    max_bytes = opts.number("max_bytes", 256 << 10, integer=True)
    return ReadFile(roots, max_bytes=max_bytes) if opts.finish() else None


def build_list_dir(opts: Options) -> ListDir | None:
    roots = _roots(opts)
    max_entries = opts.number("max_entries", 1000, integer=True)
    return ListDir(roots, max_entries=max_entries) if opts.finish() else None


async def _off_loop(func: Any, *args: Any) -> str:
    # The tools' own threads, not the default executor: a hung filesystem must not delay DNS.
    try:
        return await WORKERS.run(func, *args)
    except WorkersBusy:
        raise ToolError("the gateway's tool workers are all busy; try again") from None
