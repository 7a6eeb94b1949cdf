"""The README's Development section draws the package as it is: one line per module, no more."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _drawn() -> set[str]:
    text = (ROOT / "README.md").read_text()
    block = text[text.index("```\ngateway/\n") + 4 :]
    block = block[: block.index("```")]
    paths: set[str] = set()
    folders: list[str] = []
    for line in block.splitlines():
        found = re.match(r"( *)(\S+)", line)
        if not found:
            continue
        depth = len(found.group(1)) // 2
        name = found.group(2)
        folders = folders[:depth]
        if name.endswith("/"):
            folders.append(name.rstrip("/"))
        else:
            paths.add("/".join([*folders, name]))
    return paths


def test_the_readme_tree_names_every_module_of_the_package_and_only_those():
    shipped = {
        str(path.relative_to(ROOT))
        for path in (ROOT / "gateway").rglob("*")
        if path.is_file() and path.suffix in (".py", ".toml") and "__pycache__" not in path.parts
    }
    drawn = _drawn()
    assert sorted(shipped - drawn) == [], "modules the README does not draw"
    assert sorted(drawn - shipped) == [], "modules the README draws that are gone"
