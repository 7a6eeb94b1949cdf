"""A Python tool that leaks the upstream key in its exception, for tests/test_canary.py."""

from __future__ import annotations

import os


def leak_upstream_key() -> str:
    """Fail, saying the upstream key."""
    raise RuntimeError(f"cannot authenticate with {os.environ.get('UP_KEY', 'canary-upstream-key-7f3a91d0')}")
