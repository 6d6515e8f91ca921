"""Instance-level HA: restart a failed guest on its own healthy host, through Nova.

``decide``     GuestEvent, the facts, and the one decision: recover, ignore or give up
``heartbeat``  the guest-agent heartbeat's bookkeeping (threshold, never answered, paused)
``journal``    pending recoveries and recent restarts, kept in a small file across restarts
``recover``    stop (unless SHUTOFF), start, follow to ACTIVE: through Nova's API only
``watch``      the thin libvirt side: event loop thread, connection, reconnect, scan, ping
``monitor``    the long-running process that ties them together
``agent``      the OCF agent NovaInstanceHA (start, stop, monitor of the monitor)
"""
