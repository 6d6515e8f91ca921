"""Network namespaces for the cluster test bed: one per node, on a private bridge.

Layout: a bridge ``<prefix>br0`` in the root namespace carries the host side's address
``<subnet>.1/24``; every node is a network namespace ``<prefix><name>`` joined to the bridge
by a veth pair (host end ``<prefix>v<N>``, enslaved to the bridge; node end renamed ``eth0``
inside the namespace, address ``<subnet>.<N>/24``). A bridge rather than one /24 per veth,
so that nodes reach each other (two controllers, a controller in a namespace reaching a
remote node) as well as the host. Traffic never leaves these interfaces: the subnet is only
routed on the bridge, and nothing is forwarded to the machine's real interfaces.

Everything created here carries the prefix (``nha-`` by default), so that a crashed run's
leftovers can be found and deleted by name, and nothing else is ever touched.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass

PREFIX = "nha-"
SUBNET = "192.168.124"  # /24, only ever configured inside the test bed


def ip(*args: str, check: bool = True, netns: str | None = None) -> subprocess.CompletedProcess:
    argv = ["ip", "-n", netns, *args] if netns else ["ip", *args]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {res.stderr.strip() or res.returncode}")
    return res


def _sysctl(key: str, value: str, netns: str | None = None) -> None:
    path = f"/proc/sys/{key.replace('.', '/')}"
    if netns:
        subprocess.run(
            ["ip", "netns", "exec", netns, "sh", "-c", f"echo {value} > {path}"],
            capture_output=True,
            timeout=30,
        )
    else:
        try:
            with open(path, "w") as f:
                f.write(value)
        except OSError:
            pass


def list_namespaces(prefix: str = PREFIX) -> list[str]:
    res = ip("netns", "list", check=False)
    names = [line.split()[0] for line in res.stdout.splitlines() if line.strip()]
    return [n for n in names if n.startswith(prefix)]


def list_links(prefix: str = PREFIX) -> list[str]:
    res = ip("-o", "link", "show", check=False)
    links = []
    for line in res.stdout.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            name = parts[1].strip().split("@")[0]
            if name.startswith(prefix):
                links.append(name)
    return links


def namespace_pids(netns: str) -> list[int]:
    """PIDs of every process in the network namespace (``ip netns pids``)."""
    res = ip("netns", "pids", netns, check=False)
    return [int(p) for p in res.stdout.split() if p.isdigit()]


def kill_namespace(netns: str, sig: int = signal.SIGKILL, timeout: float = 5.0) -> list[int]:
    """Send `sig` to every process in the namespace; with SIGKILL, wait until all are gone.

    Returns the PIDs signalled. Processes that fork while we kill are caught by looping
    until the namespace is empty (or `timeout`)."""
    signalled: list[int] = []
    deadline = time.monotonic() + timeout
    while True:
        pids = [p for p in namespace_pids(netns) if p != os.getpid()]
        if not pids:
            return signalled
        for pid in pids:
            try:
                os.kill(pid, sig)
                signalled.append(pid)
            except ProcessLookupError:
                pass
        if sig != signal.SIGKILL or time.monotonic() > deadline:
            return signalled
        time.sleep(0.05)


def exec_argv(netns: str, argv: Sequence[str]) -> list[str]:
    """The argv that runs `argv` inside the namespace."""
    return ["ip", "netns", "exec", netns, *argv]


def run_in(netns: str, argv: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    kwargs.setdefault("timeout", 60)
    return subprocess.run(exec_argv(netns, argv), **kwargs)


@dataclass
class Node:
    name: str  # the node's name, e.g. "remote1"
    netns: str  # e.g. "nha-remote1"
    number: int  # N: the last octet of its address
    address: str  # e.g. "192.168.124.101"
    host_if: str  # the veth end in the root namespace (on the bridge), e.g. "nha-v101"
    node_if: str = "eth0"  # the veth end inside the namespace


class Network:
    """The bed's bridge and its node namespaces."""

    def __init__(self, prefix: str = PREFIX, subnet: str = SUBNET) -> None:
        self.prefix = prefix
        self.subnet = subnet
        self.bridge = f"{prefix}br0"
        self.host_address = f"{subnet}.1"
        self.nodes: dict[str, Node] = {}

    # -- the bridge -------------------------------------------------------------------
    def check_subnet_free(self) -> None:
        """Refuse to run if the machine already routes our subnet on another interface."""
        res = ip("-o", "-4", "addr", "show", check=False)
        for line in res.stdout.splitlines():
            fields = line.split()
            if len(fields) > 3 and fields[3].startswith(self.subnet + "."):
                if fields[1] != self.bridge:
                    raise RuntimeError(f"{self.subnet}.0/24 is already in use on {fields[1]}")

    def up(self) -> None:
        if self.bridge in list_links(self.prefix):
            return
        self.check_subnet_free()
        ip("link", "add", self.bridge, "type", "bridge")
        # No IPv6 on the bed's links: no router solicitations, no DAD, no link-local noise.
        _sysctl(f"net.ipv6.conf.{self.bridge}.disable_ipv6", "1")
        ip("addr", "add", f"{self.host_address}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")

    def down(self) -> None:
        for name in list(self.nodes):
            self.delete_node(name)
        if self.bridge in list_links(self.prefix):
            ip("link", "del", self.bridge, check=False)

    # -- nodes ------------------------------------------------------------------------
    def add_node(self, name: str, number: int) -> Node:
        """Namespace ``<prefix><name>`` with ``eth0`` = ``<subnet>.<number>/24`` on the bridge."""
        if not 2 <= number <= 254:
            raise ValueError(f"node number {number} outside 2..254")
        self.up()
        node = Node(
            name=name,
            netns=f"{self.prefix}{name}",
            number=number,
            address=f"{self.subnet}.{number}",
            host_if=f"{self.prefix}v{number}",
        )
        if node.netns in list_namespaces(self.prefix):
            raise RuntimeError(f"namespace {node.netns} already exists")
        ip("netns", "add", node.netns)
        self.nodes[name] = node  # from here on, delete_node() cleans up
        tmp_if = f"{self.prefix}p{number}"  # the peer's name until it is moved and renamed
        ip("link", "add", node.host_if, "type", "veth", "peer", "name", tmp_if)
        _sysctl(f"net.ipv6.conf.{node.host_if}.disable_ipv6", "1")
        ip("link", "set", tmp_if, "netns", node.netns)
        ip("link", "set", tmp_if, "name", node.node_if, netns=node.netns)
        _sysctl("net.ipv6.conf.all.disable_ipv6", "1", netns=node.netns)
        ip("link", "set", "lo", "up", netns=node.netns)
        ip("addr", "add", f"{node.address}/24", "dev", node.node_if, netns=node.netns)
        ip("link", "set", node.node_if, "up", netns=node.netns)
        ip("link", "set", node.host_if, "master", self.bridge)
        ip("link", "set", node.host_if, "up")
        return node

    def delete_node(self, name: str) -> None:
        node = self.nodes.pop(name, None)
        netns = node.netns if node else f"{self.prefix}{name}"
        if netns in list_namespaces(self.prefix):
            kill_namespace(netns)
            ip("netns", "del", netns, check=False)
        if node and node.host_if in list_links(self.prefix):
            ip("link", "del", node.host_if, check=False)

    def cut_link(self, name: str) -> None:
        """Pull the node's cable: its bridge port goes down (the node side loses carrier)."""
        ip("link", "set", self.nodes[name].host_if, "down")

    def restore_link(self, name: str) -> None:
        ip("link", "set", self.nodes[name].host_if, "up")

    def link_is_up(self, name: str) -> bool:
        res = ip("-o", "link", "show", self.nodes[name].host_if, check=False)
        flags = res.stdout.partition("<")[2].partition(">")[0].split(",")
        return "UP" in flags

    def pids(self, name: str) -> list[int]:
        return namespace_pids(self.nodes[name].netns)

    def kill_all(self, name: str, sig: int = signal.SIGKILL) -> list[int]:
        return kill_namespace(self.nodes[name].netns, sig)


def cleanup_leftovers(prefix: str = PREFIX) -> list[str]:
    """Delete every namespace and link named with `prefix` (a crashed run's), killing what
    runs in those namespaces first. Returns what was removed."""
    if len(prefix) < 3:
        raise ValueError("refusing to clean up with a short prefix")
    removed = []
    for netns in list_namespaces(prefix):
        kill_namespace(netns)
        ip("netns", "del", netns, check=False)
        removed.append(f"netns {netns}")
    for link in list_links(prefix):
        # A veth end goes with its peer; the bridge last.
        if ip("link", "del", link, check=False).returncode == 0:
            removed.append(f"link {link}")
    return removed
