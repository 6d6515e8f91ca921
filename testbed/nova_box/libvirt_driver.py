"""A fake compute driver backed by real libvirt domains, for the box's chosen hosts.

``server.py --libvirt-host host1=<uri>`` gives host1's nova-compute ``LibvirtFakeDriver``:
Nova's ``FakeDriver`` (its resources, its bookkeeping) plus ONE libvirt domain per server
on the libvirtd at <uri> (the test bed's, testbed/libvirt_bed), named as Nova's libvirt
driver names it (``instance.name``, ``instance-0000000N``) and with the server's UUID:

* spawn: define and start the domain (a persistent domain, as Nova's libvirt driver makes);
* power_off: destroy it (Nova's driver first asks the guest to shut down for
  ``shutdown_timeout``, 60 s; these guests have no ACPI handler, so the box goes straight to
  what Nova does after that wait: event STOPPED/DESTROYED);
* power_on: start it; reboot: destroy and start (a hard reboot); destroy: destroy, undefine;
* get_info: the domain's state from libvirt, mapped to Nova's power states;
* lifecycle events go to Nova as its libvirt driver sends them (nova/virt/libvirt/host.py):
  STOPPED -> stopped (delayed 15 s, dropped if another event of the domain comes first),
  STARTED -> started, SUSPENDED -> paused, RESUMED -> resumed; CRASHED is not sent. So a
  guest that dies on its own is stopped by Nova itself ("Instance shutdown by itself.
  Calling the stop API."), 15 s later or at Nova's periodic power-state sync if that comes
  first, as on a real compute node.

Which guest a server gets: its metadata ``nha_guest`` = ``bare`` (the default: no disk, no
agent) or ``tiny`` (a Linux with a QEMU guest agent); ``nha_guest_agent=false`` boots the
tiny guest without its agent, ``nha_on_crash`` sets ``<on_crash>`` (default destroy).

Loaded by server.py from its path (this directory is off sys.path there); the repository
root is appended to sys.path for testbed.libvirt_bed (stdlib only).
"""

import os
import sys
import threading
import time

import libvirt
from nova import exception
from nova.compute import power_state
from nova.virt import driver as virt_driver
from nova.virt import event as virtevent
from nova.virt import fake, hardware
from oslo_log import log as logging

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _ROOT not in sys.path:
    sys.path.append(_ROOT)

from testbed.libvirt_bed.events import ensure_event_loop  # noqa: E402
from testbed.libvirt_bed.guest import GuestSpec  # noqa: E402

LOG = logging.getLogger("nova_box.libvirt")

STOPPED_DELAY = 15.0  # seconds, as Nova's libvirt driver delays STOPPED (a reboot's START)
TRANSITIONS = {  # libvirt lifecycle event -> Nova's (as nova/virt/libvirt/host.py maps them)
    libvirt.VIR_DOMAIN_EVENT_STOPPED: virtevent.EVENT_LIFECYCLE_STOPPED,
    libvirt.VIR_DOMAIN_EVENT_STARTED: virtevent.EVENT_LIFECYCLE_STARTED,
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: virtevent.EVENT_LIFECYCLE_PAUSED,
    libvirt.VIR_DOMAIN_EVENT_RESUMED: virtevent.EVENT_LIFECYCLE_RESUMED,
}
POWER_STATES = {  # virDomainState -> Nova's power state
    libvirt.VIR_DOMAIN_NOSTATE: power_state.NOSTATE,
    libvirt.VIR_DOMAIN_RUNNING: power_state.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: power_state.RUNNING,  # as Nova's libvirt driver maps it
    libvirt.VIR_DOMAIN_PAUSED: power_state.PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: power_state.SHUTDOWN,
    libvirt.VIR_DOMAIN_SHUTOFF: power_state.SHUTDOWN,
    libvirt.VIR_DOMAIN_CRASHED: power_state.CRASHED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: power_state.SUSPENDED,
}


def guest_spec(instance) -> GuestSpec:
    """The domain of a server, chosen by its metadata (see the module's docstring)."""
    meta = instance.metadata or {}
    return GuestSpec(
        name=instance.name,
        uuid=instance.uuid,
        kind=meta.get("nha_guest", "bare"),
        agent=meta.get("nha_guest_agent", "true").lower() != "false",
        on_crash=meta.get("nha_on_crash", "destroy"),
    )


class LifecycleForwarder:
    """libvirt's lifecycle events of one host's servers, to Nova (``driver.emit_event``),
    through a read-only connection that is opened again when libvirtd comes back."""

    def __init__(self, driver, uri: str) -> None:
        self.driver = driver
        self.uri = uri
        self._conn = None
        self._delayed: dict[str, threading.Timer] = {}
        self._lock = threading.Lock()
        ensure_event_loop()
        name = f"libvirt-events-{driver._host}"
        threading.Thread(target=self._keep_connected, daemon=True, name=name).start()

    def _powered_off(self) -> bool:
        """The box crashed this host (power loss): its compute is gone, so are its events."""
        lost = getattr(self.driver, "_nova_box_power_lost", None)
        return lost is not None and lost.is_set()

    def _keep_connected(self) -> None:
        while not self._powered_off():
            if self._conn is None or not self._conn.isAlive():
                try:
                    self._conn = libvirt.openReadOnly(self.uri)
                    self._conn.domainEventRegisterAny(
                        None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_event, None
                    )
                except libvirt.libvirtError as exc:
                    LOG.warning("libvirt events: %s", exc.get_error_message())
                    self._conn = None
            time.sleep(1.0)
        if self._conn is not None:
            self._conn.close()

    def _on_event(self, conn, dom, event, detail, opaque) -> None:
        uuid = dom.UUIDString()
        transition = TRANSITIONS.get(event)
        if transition is None or uuid not in self.driver.instances or self._powered_off():
            return
        with self._lock:
            pending = self._delayed.pop(uuid, None)
            if pending:
                pending.cancel()
            if transition == virtevent.EVENT_LIFECYCLE_STOPPED:
                timer = threading.Timer(STOPPED_DELAY, self._emit, (uuid, transition))
                timer.daemon = True
                self._delayed[uuid] = timer
                timer.start()
                return
        self._emit(uuid, transition)

    def _emit(self, uuid: str, transition: int) -> None:
        with self._lock:
            self._delayed.pop(uuid, None)
        # In a thread of its own: Nova's handler takes locks and calls the database.
        threading.Thread(
            target=self.driver.emit_event,
            args=(virtevent.LifecycleEvent(uuid, transition),),
            daemon=True,
        ).start()


class LibvirtFakeDriver(fake.FakeDriver):
    """FakeDriver + one real libvirt domain per server (same UUID)."""

    def __init__(self, virtapi, uri: str, read_only: bool = False) -> None:
        super().__init__(virtapi, read_only)
        self.uri = uri
        self._conn = None
        self._conn_lock = threading.Lock()
        self.events = None

    def init_host(self, host):
        super().init_host(host)
        if self.events is None:
            self.events = LifecycleForwarder(self, self.uri)

    # -- libvirt ----------------------------------------------------------------------
    def _connection(self):
        """One connection, opened again after libvirtd went away."""
        with self._conn_lock:
            if self._conn is None or not self._conn.isAlive():
                libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
                self._conn = libvirt.open(self.uri)
            return self._conn

    def _domain(self, uuid: str):
        try:
            return self._connection().lookupByUUIDString(uuid)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    def _drop_stale(self, spec: GuestSpec) -> None:
        """A domain of that name left by an earlier box (another server's UUID): gone."""
        try:
            old = self._connection().lookupByName(spec.name)
        except libvirt.libvirtError:
            return
        if old.UUIDString() != spec.uuid:
            LOG.info("libvirt: removing stale domain %s (%s)", spec.name, old.UUIDString())
            self._stop_domain(old)
            old.undefine()

    @staticmethod
    def _stop_domain(dom) -> None:
        try:
            dom.destroy()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:  # not running
                raise

    def _start_domain(self, instance) -> None:
        dom = self._domain(instance.uuid)
        if dom is None:
            spec = guest_spec(instance)
            self._drop_stale(spec)
            dom = self._connection().defineXML(spec.xml())
        if not dom.isActive():
            dom.create()
        LOG.info("libvirt: domain %s (%s) running", dom.name(), instance.uuid)

    # -- the driver API ---------------------------------------------------------------
    # Nova's arguments are passed on as they came: only the instance matters here.
    def spawn(self, context, instance, *args, **kwargs):
        super().spawn(context, instance, *args, **kwargs)
        power_on = kwargs.get("power_on", args[6] if len(args) > 6 else True)
        if power_on:
            self._start_domain(instance)

    def power_off(self, instance, *args, **kwargs):
        super().power_off(instance, *args, **kwargs)
        dom = self._domain(instance.uuid)
        if dom is not None:
            self._stop_domain(dom)

    def power_on(self, context, instance, *args, **kwargs):
        super().power_on(context, instance, *args, **kwargs)
        self._start_domain(instance)

    def reboot(self, context, instance, *args, **kwargs):
        """A hard reboot whatever the type: these guests ignore ACPI (Nova's driver also
        ends a soft reboot the guest ignores with a hard one)."""
        super().reboot(context, instance, *args, **kwargs)
        dom = self._domain(instance.uuid)
        if dom is not None:
            self._stop_domain(dom)
        self._start_domain(instance)

    def destroy(self, context, instance, *args, **kwargs):
        super().destroy(context, instance, *args, **kwargs)
        dom = self._domain(instance.uuid)
        if dom is not None:
            self._stop_domain(dom)
            dom.undefine()

    def get_info(self, instance, use_cache=True):
        dom = self._domain(instance.uuid)
        if dom is None:
            if instance.uuid in self.instances:  # spawned powered off: no domain yet
                return super().get_info(instance, use_cache)
            raise exception.InstanceNotFound(instance_id=instance.uuid)
        state = POWER_STATES.get(dom.state()[0], power_state.NOSTATE)
        if instance.uuid in self.instances:
            self.instances[instance.uuid].state = state
        return hardware.InstanceInfo(state=state)


def install(libvirt_hosts: dict) -> None:
    """Give each host of `libvirt_hosts` (host -> libvirt URI) a LibvirtFakeDriver: Nova's
    ComputeManager loads its driver with ``driver.load_compute_driver(virtapi)`` once its
    host is set, so that call decides, by the manager's host."""
    original = virt_driver.load_compute_driver
    if getattr(original, "_nova_box_libvirt", False):
        return

    def load_compute_driver(virtapi, compute_driver=None):
        host = getattr(getattr(virtapi, "_compute", None), "host", None)
        if host in libvirt_hosts:
            LOG.info("nova box: compute %s uses libvirt at %s", host, libvirt_hosts[host])
            return LibvirtFakeDriver(virtapi, libvirt_hosts[host])
        return original(virtapi, compute_driver)

    load_compute_driver._nova_box_libvirt = True
    virt_driver.load_compute_driver = load_compute_driver
