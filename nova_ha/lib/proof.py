"""The proof that a host is powered off: the one thing Nova writes for a host require.

The safety rule, "nothing in Nova changes for a host before its power-off is confirmed", is
held by this type. A ``PowerOffConfirmed`` comes into being in three ways only:

- ``by_bmc``: the fence action's power-off step, after the host's BMC reported it off;
- ``by_topology``: the fence action running as a later fencing-topology level (an earlier
  level confirmed the power-off before Pacemaker ran this one);
- ``from_record``: a host record read from the state store that says the host was fenced
  (only a fence action writes that state, and only after one of the two above).

The constructor refuses every other caller, so code that has no proof cannot make one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from nova_ha.lib import lifecycle

if TYPE_CHECKING:
    from nova_ha.lib.state import HostRecord

_KEY = object()  # only the factories below make proofs


@dataclass(frozen=True)
class PowerOffConfirmed:
    """`node` (Nova host `host`) is off; every Nova write for the host takes one."""

    node: str
    host: str
    by: str  # who confirmed it, for the log and the record
    at: float = field(default_factory=time.time)
    key: object = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.key is not _KEY:
            raise TypeError(
                "a PowerOffConfirmed is made only by the fence path or from a "
                "record of a fenced host"
            )


def by_bmc(node: str, host: str) -> PowerOffConfirmed:
    """The host's BMC reported it off (the fence action's power-off step)."""
    return PowerOffConfirmed(node, host, "its BMC", key=_KEY)


def by_topology(node: str, host: str) -> PowerOffConfirmed:
    """An earlier fencing-topology level confirmed the power-off."""
    return PowerOffConfirmed(node, host, "an earlier fencing level", key=_KEY)


def from_record(record: HostRecord, host: str) -> PowerOffConfirmed | None:
    """The proof a fenced host's record carries; None when the record says nothing of a
    confirmed power-off (state ok, or never fenced)."""
    if record.state not in lifecycle.POWERED_OFF:
        return None
    return PowerOffConfirmed(record.host, host, "its record (fenced by a fence action)", key=_KEY)
