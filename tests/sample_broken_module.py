"""A module that fails at import, for tests/test_pyfunc.py."""

raise RuntimeError("boom at import")
