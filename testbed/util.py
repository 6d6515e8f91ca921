"""What the test bed shares with the tests: where the repository is, and how a missing
component is reported (a skip, or under CI a failure)."""

from __future__ import annotations

import os
from pathlib import Path

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
