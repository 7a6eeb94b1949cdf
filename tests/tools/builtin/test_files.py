"""read_file and list_dir: only inside the configured roots, never blocking."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from gateway.errors import Problems
from gateway.tools import builtin
from gateway.tools.base import ToolError
from gateway.tools.builtin import files
from gateway.tools.builtin.files import ListDir, ReadFile, Roots


@pytest.fixture
def tree(tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "hello.txt").write_text("hello\n")
    (data / "sub" / "inner.txt").write_text("inner")
    (data / "big.txt").write_text("x" * 5000)
    (data / "bin.dat").write_bytes(b"\x7fELF\x00\x01\x02")
    (data / "latin.txt").write_bytes(b"caf\xe9")
    (tmp_path / "secret.txt").write_text("top secret")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "file.txt").write_text("outside")
    (tmp_path / "data2").mkdir()
    (tmp_path / "data2" / "secret.txt").write_text("sibling secret")
    (data / "link_in").symlink_to(data / "hello.txt")
    (data / "link_out").symlink_to(tmp_path / "secret.txt")
    (data / "dirlink_out").symlink_to(tmp_path / "outside")
    os.mkfifo(data / "fifo")
    return tmp_path


def reader(tree, **kw):
    return ReadFile(Roots([Path(os.path.realpath(tree / "data"))]), **kw)


def lister(tree, **kw):
    return ListDir(Roots([Path(os.path.realpath(tree / "data"))]), **kw)


async def read(tool, path):
    # A bounded wait: a read that blocks (a FIFO) must fail the test, not hang it.
    return await asyncio.wait_for(tool.call({"path": path}), 5)


async def test_reads_relative_and_absolute_paths_inside(tree):
    tool = reader(tree)
    assert await read(tool, "hello.txt") == "hello\n"
    assert await read(tool, "sub/inner.txt") == "inner"
    assert await read(tool, "./sub/../hello.txt") == "hello\n"
    assert await read(tool, str(tree / "data" / "sub" / "inner.txt")) == "inner"
    assert await read(tool, "link_in") == "hello\n"


@pytest.mark.parametrize(
    "path",
    ["../secret.txt", "sub/../../secret.txt", "../data2/secret.txt", "link_out", "dirlink_out/file.txt",
     "/etc/passwd", "/proc/self/environ", "../../../../../../etc/passwd"],
)
async def test_paths_outside_the_roots_are_refused(tree, path):
    with pytest.raises(ToolError, match="outside the allowed directories") as info:
        await read(reader(tree), path)
    message = str(info.value)
    assert "secret" not in message.replace(path, "") and "outside/file" not in message.replace(path, "")
    assert str(tree) not in message.replace(path, "")


async def test_absolute_paths_outside_and_prefix_siblings_are_refused(tree):
    for path in (tree / "secret.txt", tree / "data2" / "secret.txt", tree / "data2", tree):
        with pytest.raises(ToolError, match="outside the allowed directories"):
            await read(reader(tree), str(path))


async def test_fifo_is_refused_without_blocking(tree):
    with pytest.raises(ToolError, match="not a regular file"):
        await read(reader(tree), "fifo")


async def test_proc_sys_and_dev_are_refused_even_under_a_root_of_slash():
    tool = ReadFile(Roots([Path("/")]))
    for path in ("/proc/self/environ", "/proc/self/cmdline", "/sys/kernel/hostname", "/dev/zero", "/dev/null"):
        with pytest.raises(ToolError, match="outside the allowed directories"):
            await read(tool, path)


async def test_nul_bytes_refused(tree):
    with pytest.raises(ToolError, match="NUL"):
        await read(reader(tree), "hello.txt\x00.png")


async def test_size_cap_truncates(tree):
    text = await read(reader(tree, max_bytes=1000), "big.txt")
    assert text == "x" * 1000 + "\n\n(truncated: the file is 5000 bytes; only the first 1000 were read)"


async def test_truncation_does_not_split_a_character(tree):
    (tree / "data" / "euro.txt").write_text("€" * 10)  # 3 bytes each
    assert await read(reader(tree, max_bytes=4), "euro.txt") == (
        "€\n\n(truncated: the file is 30 bytes; only the first 4 were read)"
    )


async def test_binary_refused_and_bad_utf8_replaced(tree):
    with pytest.raises(ToolError, match="binary file"):
        await read(reader(tree), "bin.dat")
    assert await read(reader(tree), "latin.txt") == "caf\ufffd"


async def test_directories_missing_files_and_bad_arguments(tree):
    with pytest.raises(ToolError, match="is a directory; use list_dir"):
        await read(reader(tree), "sub")
    with pytest.raises(ToolError, match="no such file or directory: 'nope.txt'"):
        await read(reader(tree), "nope.txt")
    with pytest.raises(ToolError, match="path must be a string"):
        await reader(tree).call({})


async def test_a_swapped_directory_is_caught_after_open(tree):
    # What the post-open check sees if a directory was swapped for a symlink after realpath.
    root = Path(os.path.realpath(tree / "data"))
    with pytest.raises(ToolError, match="outside the allowed directories"):
        files._open(tree / "secret.txt", root, "sub/x", files.OPEN_FLAGS)


async def test_list_dir(tree):
    (tree / "data" / "sub" / "deeper").mkdir()
    assert await lister(tree).call({}) == "\n".join(
        [".:", "big.txt (5000 bytes)", "bin.dat (7 bytes)", "dirlink_out@", "fifo (special file)",
         "hello.txt (6 bytes)", "latin.txt (4 bytes)", "link_in@", "link_out@", "sub/"]
    )
    assert await lister(tree).call({"path": "sub"}) == "sub:\ndeeper/\ninner.txt (5 bytes)"
    assert await lister(tree).call({"path": "sub/deeper"}) == "sub/deeper:\n(empty)"


async def test_list_dir_refusals_and_cap(tree):
    for path in ("..", "dirlink_out", str(tree / "data2"), "/proc/self"):
        with pytest.raises(ToolError, match="outside the allowed directories"):
            await lister(tree).call({"path": path})
    with pytest.raises(ToolError, match="is not a directory"):
        await lister(tree).call({"path": "hello.txt"})
    with pytest.raises(ToolError, match="no such file"):
        await lister(tree).call({"path": "nothing"})
    text = await lister(tree, max_entries=2).call({})
    assert text == ".:\nbig.txt (5000 bytes)\nbin.dat (7 bytes)\n... and 7 more"


async def test_several_roots(tree):
    roots = Roots([Path(os.path.realpath(tree / "data")), Path(os.path.realpath(tree / "outside"))])
    assert await read(ReadFile(roots), "file.txt") == "outside"
    assert await read(ReadFile(roots), "hello.txt") == "hello\n"
    assert await read(ReadFile(roots), "dirlink_out/file.txt") == "outside"  # the link now lands in a root
    listing = await ListDir(roots).call({"path": str(tree / "outside")})
    assert listing.splitlines()[1:] == ["file.txt (7 bytes)"]


def test_config(tree):
    problems = Problems("toolgate.toml")
    table = {
        "read_file": {"roots": [str(tree / "data")], "max_bytes": 100},
        "list_dir": {"roots": [str(tree / "data"), str(tree / "outside")], "max_entries": 5},
    }
    source = builtin.build("builtin", table, problems, "tools.builtin")
    assert problems.lines == []
    read_tool, list_tool = source.tools()
    assert read_tool.max_bytes == 100 and list_tool.max_entries == 5
    assert str(tree / "data") in read_tool.description


@pytest.mark.parametrize(
    "options, message",
    [
        ({}, "read_file.roots: required; expected a list of strings"),
        ({"roots": []}, "read_file.roots: expected at least one directory"),
        ({"roots": ["relative/dir"]}, "read_file.roots: 'relative/dir': expected an absolute path to an existing"),
        ({"roots": ["/no/such/dir"]}, "read_file.roots: '/no/such/dir': expected an absolute path"),
        ({"roots": ["/proc"]}, "read_file.roots: '/proc': /proc, /sys and /dev cannot be roots"),
        ({"roots": ["/tmp"], "max_bytes": 0}, "read_file.max_bytes: expected an integer greater than 0"),
    ],
)
def test_config_problems(options, message):
    problems = Problems("toolgate.toml")
    assert builtin.build("builtin", {"read_file": options}, problems, "tools.builtin") is None
    (line,) = problems.lines
    assert line.startswith(f"toolgate.toml: tools.builtin.{message}")


# --- dotfiles: hidden unless the tool's table opens them ---------------------------------


@pytest.fixture
def dotted(tree):
    data = tree / "data"
    (data / ".env").write_text("API_TOKEN=env-token-1234")
    (data / ".git").mkdir()
    (data / ".git" / "config").write_text('[remote "origin"]\n\turl = https://x:ghp_token@github.com/o/r\n')
    (data / "sub" / ".hidden").mkdir()
    (data / "sub" / ".hidden" / "notes.txt").write_text("hidden notes")
    (data / "gitlink").symlink_to(data / ".git")  # a visible name pointing into a dot-directory
    (data / "cfglink").symlink_to(data / ".git" / "config")
    (data / ".alias").symlink_to(data / "hello.txt")  # a hidden name pointing at a visible file
    return tree


def open_roots(tree, **kw):
    return Roots([Path(os.path.realpath(tree / "data"))], **kw)


HIDDEN_PATHS = [
    ".env", ".git/config", "./.env", "sub/../.env", "sub/.hidden/notes.txt", "gitlink/config", "cfglink", ".alias",
    ".git/../hello.txt",
]


@pytest.mark.parametrize("path", HIDDEN_PATHS)
async def test_read_file_refuses_dotfiles_and_paths_through_dot_directories(dotted, path):
    with pytest.raises(ToolError, match="is hidden") as info:
        await read(ReadFile(open_roots(dotted)), path)
    assert "token" not in str(info.value)


async def test_read_file_refuses_absolute_paths_to_dotfiles(dotted):
    tool = ReadFile(open_roots(dotted))
    for path in (dotted / "data" / ".env", dotted / "data" / ".git" / "config"):
        with pytest.raises(ToolError, match="is hidden"):
            await read(tool, str(path))
    # A missing dotfile is refused the same way: no hint whether it exists.
    with pytest.raises(ToolError, match="is hidden"):
        await read(tool, ".netrc")


async def test_dotfiles_true_serves_them(dotted):
    tool = ReadFile(open_roots(dotted, dotfiles=True))
    assert await read(tool, ".env") == "API_TOKEN=env-token-1234"
    assert "ghp_token" in await read(tool, ".git/config")
    assert "ghp_token" in await read(tool, "gitlink/config")
    assert "ghp_token" in await read(tool, "cfglink")
    assert await read(tool, ".alias") == "hello\n"
    assert await read(tool, str(dotted / "data" / "sub" / ".hidden" / "notes.txt")) == "hidden notes"


async def test_list_dir_leaves_dotfiles_out_and_refuses_dot_directories(dotted):
    tool = ListDir(open_roots(dotted))
    listing = await tool.call({})
    assert ".env" not in listing and ".git" not in listing and ".alias" not in listing
    assert "gitlink@" in listing and "cfglink@" in listing  # links are listed, not followed
    assert await tool.call({"path": "sub"}) == "sub:\ninner.txt (5 bytes)"
    for path in (".git", "gitlink", "sub/.hidden", str(dotted / "data" / ".git")):
        with pytest.raises(ToolError, match="is hidden"):
            await tool.call({"path": path})
    (dotted / "data" / "sub" / "only_dots").mkdir()
    (dotted / "data" / "sub" / "only_dots" / ".keep").write_text("")
    assert await tool.call({"path": "sub/only_dots"}) == "sub/only_dots:\n(empty)"


async def test_list_dir_cap_counts_only_visible_entries(dotted):
    text = await ListDir(open_roots(dotted), max_entries=2).call({})
    assert text == ".:\nbig.txt (5000 bytes)\nbin.dat (7 bytes)\n... and 9 more"


async def test_list_dir_with_dotfiles_true(dotted):
    tool = ListDir(open_roots(dotted, dotfiles=True))
    listing = (await tool.call({})).splitlines()
    assert {".env (24 bytes)", ".git/", ".alias@"} <= set(listing)
    assert await tool.call({"path": "gitlink"}) == ".git:\nconfig (60 bytes)"  # shown where it resolved
    assert await tool.call({"path": "sub/.hidden"}) == "sub/.hidden:\nnotes.txt (12 bytes)"


async def test_a_directory_swapped_for_a_dot_directory_is_caught_after_open(dotted):
    root = Path(os.path.realpath(dotted / "data"))
    with pytest.raises(ToolError, match="is hidden"):
        files._open(root / ".git" / "config", root, "sub/config", files.OPEN_FLAGS, open_roots(dotted))
    fd = files._open(root / ".git" / "config", root, "x", files.OPEN_FLAGS, open_roots(dotted, dotfiles=True))
    os.close(fd)


def test_a_root_inside_a_dot_directory_is_fine(tmp_path):
    root = tmp_path / ".config" / "docs"
    root.mkdir(parents=True)
    (root / "a.txt").write_text("a")
    tool = ReadFile(Roots([Path(os.path.realpath(root))]))
    assert asyncio.run(tool.call({"path": "a.txt"})) == "a"
    assert asyncio.run(tool.call({"path": str(Path(os.path.realpath(root)) / "a.txt")})) == "a"


def test_dotfiles_option_in_config(tree):
    problems = Problems("toolgate.toml")
    table = {
        "read_file": {"roots": [str(tree / "data")], "dotfiles": True},
        "list_dir": {"roots": [str(tree / "data")]},
    }
    read_tool, list_tool = builtin.build("builtin", table, problems, "tools.builtin").tools()
    assert problems.lines == []
    assert read_tool.roots.dotfiles is True and list_tool.roots.dotfiles is False
    assert "Hidden files" in list_tool.description and "Hidden files" not in read_tool.description
    builtin.build("builtin", {"read_file": {"roots": [str(tree / "data")], "dotfiles": "yes"}}, problems, "tools.builtin")
    assert problems.lines == ["toolgate.toml: tools.builtin.read_file.dotfiles: expected true or false, got 'yes'"]
