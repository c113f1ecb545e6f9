"""Test-session settings shared by every test directory."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The reliability suites (the SIGKILL loops take up to a minute each) start first: with
    several workers (`make test` runs pytest-xdist), a long test that began last would leave
    the other workers idle while it runs."""
    items.sort(key=lambda item: not item.nodeid.startswith("tests/reliability/"))
