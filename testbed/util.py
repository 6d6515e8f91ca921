"""What the test bed shares with the tests: where the repository is, how a missing
component is reported (a skip, or under CI a failure), and waiting for a condition."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FENCE_AGENT = ROOT / "agents" / "fence" / "fence_nova_evacuate"
IN_CI = os.environ.get("CI", "").lower() == "true"


def need(condition: bool, what: str) -> None:
    """Skip when a component is missing; under CI a missing component is a failure."""
    import pytest  # only when a test asks: the demo and the benchmarks run without pytest

    if condition:
        return
    if IN_CI:
        pytest.fail(f"required component missing under CI: {what}")
    pytest.skip(f"missing: {what}")


def wait_for(
    predicate: Callable[[], Any], timeout: float, interval: float = 0.2, what: str = "condition"
) -> Any:
    """The predicate's first truthy value, polled; AssertionError naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def cloud_params(cloud: Any) -> dict[str, str]:
    """The agents' OpenStack parameters for a test cloud (the simulator, the box, the
    production-shaped Nova): its Keystone and admin credentials."""
    return {
        "os_auth_url": cloud.auth_url,
        "os_username": cloud.username,
        "os_password": cloud.password,
        "os_project_name": cloud.project_name,
        "os_interface": "public",
    }
