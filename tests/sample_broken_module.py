"""A module that fails at import, for tests/tools/test_pyfunc.py."""

raise RuntimeError("boom at import")
