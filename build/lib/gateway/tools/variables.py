"""`${VAR}` in a tool source's header or env values: read from the gateway's environment when
the source connects (so a rotated secret is picked up on reconnect), checked when config loads.

    check(headers, opts.problem, "headers")                # at load: each bad reference a problem
    value = expand("Bearer ${PETS_TOKEN}", environ)         # at connect: UnsetVariable if unset
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

REFERENCE = re.compile(r"\$\{([^}]*)\}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class UnsetVariable(Exception):
    """A ``${VAR}`` names a variable the gateway's environment lacks."""


def expand(value: str, environ: Mapping[str, str]) -> str:
    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environ:
            raise UnsetVariable(f"environment variable {name} is not set")
        return environ[name]

    return REFERENCE.sub(substitute, value)


def check(table: Mapping[str, str], problem: Callable[[str, str], None], option: str) -> None:
    """`problem(key, what)` for each value of `table` with a reference that is not `${NAME}`,
    or an unclosed `${`."""
    for name, value in table.items():
        if any(not _NAME.fullmatch(m.group(1)) for m in REFERENCE.finditer(value)):
            problem(f"{option}.{name}", "expected ${VAR} with VAR a variable name")
        if "${" in REFERENCE.sub("", value):
            problem(f"{option}.{name}", "unclosed ${")
