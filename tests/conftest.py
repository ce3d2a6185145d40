"""Fixtures more than one test file uses."""
import pytest

import sandbox
from helpers import KEY


@pytest.fixture
def key(monkeypatch):
    """The API key a test server expects, exported as STUB_KEY."""
    monkeypatch.setenv("STUB_KEY", KEY)
    return KEY


@pytest.fixture(scope="module")
def pool():
    """Two sandboxes with a 2 s limit per cell, shared by a test module's tests."""
    p = sandbox.SandboxPool(2, timeout=2)
    yield p
    p.close()
