"""The hand-over from a fence action to NovaEvacuate's evacuation service.

The record in the CIB is the hand-over itself: 'fenced', with the host's lease granted to
the service (``SERVICE_OWNER``), written in one CIB write. The service reads the records
every ``watch_interval``; a fence device on the service's own controller also wakes it at
once through a local socket, so the evacuation starts with no poll interval in between. The
wake-up carries no authority: the service acts only on what the record says.
"""

from __future__ import annotations

import os
import socket

from nova_ha.lib import params

# The lease owner that the fence action names: whichever node runs NovaEvacuate (a
# primitive, so at most one at a time, which Pacemaker guarantees and fencing enforces).
SERVICE_OWNER = params.EVACUATE
DEFAULT_RUN_DIR = "/run/nova-ha"
SOCKET_NAME = "evacuation.sock"
WAKE_TIMEOUT = 0.2  # a wake-up is a courtesy: never worth more of a fence action's time
NODE_MAX = 253


def run_dir() -> str:
    """Where the service keeps its socket (a test bed points it at a private folder)."""
    return os.environ.get("NOVA_HA_RUN_DIR") or DEFAULT_RUN_DIR


def socket_path() -> str:
    return os.path.join(run_dir(), SOCKET_NAME)


def wake(node: str) -> bool:
    """Tell a service on this node that `node` was recorded fenced; False if none listens."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.settimeout(WAKE_TIMEOUT)
            sock.sendto(node.encode()[:NODE_MAX], socket_path())
        return True
    except OSError:
        return False


def listen() -> socket.socket:
    """The service's end: a datagram socket only root can write to."""
    directory = run_dir()
    os.makedirs(directory, mode=0o700, exist_ok=True)
    path = socket_path()
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    old = os.umask(0o077)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    return sock


def received(sock: socket.socket) -> list[str]:
    """Every node name waiting on the socket, without blocking."""
    names: list[str] = []
    while True:
        try:
            data = sock.recv(NODE_MAX + 1, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return names
        text = data.decode("utf-8", "replace").strip()
        if text:
            names.append(text)
