"""The Richpanel sandbox on a real socket, shared by the delivery and attack tests of a module."""

from __future__ import annotations

from typing import Any, Iterator

import pytest

from plugins.richpanel.sandbox import SandboxConfig, SandboxServer, run_in_thread

@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    with run_in_thread(SandboxConfig(quota=None)) as srv:
        yield srv


@pytest.fixture
def sandbox(server: SandboxServer) -> Any:
    """The module's sandbox, emptied, without faults and without accounts (each test adds its own)."""
    server.state.reset()
    server.state.update_config(quota=None, error_rate=0, rate_limit_rate=0, drop_rate=0, latency_ms=(0, 0),
                               limit_status=429, retry_after_form="seconds", window=30.0)
    return server
