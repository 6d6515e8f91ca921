"""The monitor process: parameters from stdin, clients, the libvirt loop, the main loop."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

from nova_ha.lib import log, params

if TYPE_CHECKING:
    from nova_ha.instance import monitor

LOG = log.get("instance-monitor")
NODE_ENV = "NOVA_HA_NODE"  # the Pacemaker node name, given by the agent


def serve(raw: Mapping[str, str], alive_file: str | None) -> int:
    """The monitor until SIGTERM."""
    from nova_ha.instance import monitor

    parsed = params.parse(raw, params.INSTANCE)
    log.REDACTOR.add(*parsed.secrets())
    if parsed.problems:
        for problem in parsed.problems:
            LOG.error("%s", problem)
        return 6  # OCF_ERR_CONFIGURED: the agent's start reports the log
    instance = _monitor(parsed)
    instance.watch.start_loop()
    try:
        instance.run(alive_file, monitor.catch_signals())
    finally:
        LOG.info(
            "instance monitor stopping (%d recoveries pending)", len(instance.journal.pending())
        )
        instance.close()
    return 0


def _monitor(parsed: params.Parsed) -> monitor.Monitor:
    """The monitor of this node: its clients and its libvirt watch."""
    from nova_ha.instance import monitor, watch
    from nova_ha.lib.notify import Notifier
    from nova_ha.openstack.compute import Nova

    settings = parsed.settings.instance
    node = os.environ.get(NODE_ENV) or os.uname().nodename
    ctx = monitor.Context(
        parsed,
        node,
        Nova.from_params(parsed),
        monitor.open_store(),
        Notifier.from_settings(parsed.settings.notify, params.INSTANCE),
    )
    LOG.info(
        "instance monitor started (pid %d, node %s, host %s, %s, heartbeat %s)",
        os.getpid(),
        node,
        ctx.host,
        settings.libvirt_uri,
        f"every {settings.heartbeat_interval:g} s" if settings.heartbeat else "off",
    )
    # The heartbeat asks the guest agents through libvirtd: that needs a read-write link.
    readonly = not settings.heartbeat
    return monitor.Monitor(
        ctx, lambda sink: watch.LibvirtWatch(settings.libvirt_uri, sink, readonly=readonly)
    )


def main(argv: list[str]) -> int:
    log.setup(params.INSTANCE, stderr_format="%(asctime)s %(process)d %(levelname)s: %(message)s")
    if argv[:1] == ["serve"]:
        raw = json.loads(sys.stdin.buffer.readline(1 << 20) or b"{}")
        code = serve(raw, argv[1] if len(argv) > 1 else None)
        sys.stdout.flush()
        os._exit(code)  # the libvirt loop thread and idle pools must not hold the exit
    print("usage: python -m nova_ha.instance serve [ALIVE_FILE]", file=sys.stderr)
    return 2
