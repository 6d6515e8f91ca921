"""Drive the real Nova 34 test box (``server.py``) from the test suite.

Imported by the suite's own venv (stdlib only here). The box runs as a
subprocess under ``.venv-nova/bin/python`` (see ``setup-venv.sh``)::

    from testbed.nova_box import NovaBox

    with NovaBox(hosts=("host1", "host2", "host3")) as box:
        ids = box.create_servers("host1", 5)
        box.crash("host1")            # power loss: no heartbeats, no RPC
        ...                           # evacuate through the real API
        box.start("host1")            # power on: nova-compute's init runs
        log = box.request_log()       # every compute API request, in order

Credentials: ``auth_url`` (Keystone v3), ``username``/``password``,
``project_name``, ``user_domain_name``/``project_domain_name``, or the
application credential ``app_cred_id``/``app_cred_secret``. The catalog has
a ``compute`` service in region ``RegionOne`` (public, internal and admin
endpoints all ``compute_url``).
"""

import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import weakref

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
VENV_DIR = os.environ.get("NOVA_VENV", os.path.join(REPO_ROOT, ".venv-nova"))
SERVER = os.path.join(HERE, "server.py")

# Must match server.py.
IMAGE_DEFAULT = "155d900f-4e14-4e4c-a73d-069cbf4541e6"
IMAGE_EVACUABLE = "e7ac0ab1-0000-4000-8000-00000000e7ac"  # evacuable=true
FLAVOR_TINY = "1"  # m1.tiny: 1 vCPU, 512 MB, 1 GB
FLAVOR_SMALL = "2"  # m1.small: 1 vCPU, 2 GB, 20 GB
FLAVOR_EVACUABLE = "100"  # m1.evacuable: m1.tiny + extra spec evacuable=true
PROJECT_ID = "6f70656e737461636b20342065766572"
USER_ID = "a0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5"


def venv_python(venv=None):
    return os.path.join(venv or VENV_DIR, "bin", "python")


def available(venv=None):
    """True if the Nova venv exists (``make`` / setup-venv.sh made it)."""
    return os.access(venv_python(venv), os.X_OK)


# Boxes whose rebuild delay is on: the ``nova_box`` plugin (fixtures.py) turns
# it off after every test, so that it never leaks into the next one.
DELAYED_BOXES = weakref.WeakSet()


class NovaBoxError(RuntimeError):
    pass


class ControlError(NovaBoxError):
    def __init__(self, status, body):
        super().__init__(f"control API answered {status}: {body}")
        self.status = status
        self.body = body


class NovaBox:
    """A real Nova 34 (API, conductor, scheduler, placement, fake computes)."""

    username = "admin"
    password = "secret"
    project_name = "admin"
    project_id = PROJECT_ID
    user_id = USER_ID
    user_domain_name = "Default"
    project_domain_name = "Default"
    app_cred_id = "appcred-id"
    app_cred_secret = "appcred-secret"
    region_name = "RegionOne"
    image_default = IMAGE_DEFAULT
    image_evacuable = IMAGE_EVACUABLE

    def __init__(
        self,
        hosts=("host1", "host2", "host3"),
        state_dir=None,
        binds=("127.0.0.1",),
        port=0,
        venv=None,
        boot_timeout=90,
        report_interval=1,
        service_down_time=6,
        debug=False,
        keep_state_dir=None,
        libvirt_hosts=None,
    ):
        self.hosts_names = list(hosts)
        self.binds = list(binds)
        self.port = port
        self.venv = venv or VENV_DIR
        self.boot_timeout = boot_timeout
        self.report_interval = report_interval
        self.service_down_time = service_down_time
        self.debug = debug
        # host -> libvirt URI: that host's servers are real libvirt domains (libvirt_driver.py)
        self.libvirt_hosts = dict(libvirt_hosts or {})
        self._own_state_dir = state_dir is None
        self.state_dir = (
            str(state_dir) if state_dir is not None else tempfile.mkdtemp(prefix="nova-box-")
        )
        if keep_state_dir is None:
            keep_state_dir = os.environ.get("NOVA_BOX_KEEP") == "1"
        self.keep_state_dir = keep_state_dir
        self.proc = None
        self.pid = None
        self.ready = None
        self.auth_url = None
        self.compute_url = None
        self.control_url = None
        self.log_path = os.path.join(self.state_dir, "nova-box.log")
        self.stderr_path = os.path.join(self.state_dir, "server.stderr")

    # -- lifecycle ---------------------------------------------------------
    def __enter__(self):
        return self.boot()

    def __exit__(self, *exc):
        self.stop()

    def boot(self):
        """Start server.py and wait for its ready line. Returns self."""
        if self.proc is not None:
            return self
        if not available(self.venv):
            raise NovaBoxError(
                f"Nova venv missing: {self.venv} (run testbed/nova_box/setup-venv.sh)"
            )
        os.makedirs(self.state_dir, exist_ok=True)
        cmd, env = self._command()
        self._stderr = open(self.stderr_path, "wb")
        # stdin stays an open pipe: if this process dies, the box sees EOF
        # and stops by itself.
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
            cwd=self._cwd(),
        )
        self.pid = self.proc.pid
        try:
            line = self._read_ready_line()
            self.ready = json.loads(line)
        except BaseException:
            self.stop()
            raise
        self.port = self.ready["port"]
        self.auth_url = self.ready["auth_url"]
        self.compute_url = self.ready["compute_url"]
        self.boot_seconds = self.ready.get("boot_seconds")
        self.control_url = f"http://{_url_host(self.binds[0])}:{self.port}/_testbed"
        return self

    def _shared_args(self):
        """The options the box and the production-shaped bed both take."""
        return [
            "--hosts",
            ",".join(self.hosts_names),
            "--state-dir",
            self.state_dir,
            "--report-interval",
            str(self.report_interval),
            "--service-down-time",
            str(self.service_down_time),
            "--exit-on-stdin-eof",
        ] + (["--debug"] if self.debug else [])

    def _command(self):
        """The box's command line and environment (the production-shaped bed has its own)."""
        cmd = [venv_python(self.venv), SERVER, "--port", str(self.port), *self._shared_args()]
        for addr in self.binds:
            cmd += ["--bind", addr]
        for host, uri in self.libvirt_hosts.items():
            cmd += ["--libvirt-host", f"{host}={uri}"]
        env = dict(os.environ)
        for var in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
            env.pop(var, None)
        return cmd, env

    def _cwd(self):
        return self.state_dir

    def _read_ready_line(self):
        deadline = time.monotonic() + self.boot_timeout
        buf = b""
        fd = self.proc.stdout.fileno()
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise NovaBoxError(
                    f"nova box not ready after {self.boot_timeout}s; see {self.log_path}"
                )
            ready, _, _ = select.select([fd], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    self.proc.wait(timeout=5)
                    raise NovaBoxError(
                        f"nova box exited ({self.proc.returncode}) before ready:\n"
                        + self._stderr_tail()
                    )
                buf += chunk
        return buf.split(b"\n", 1)[0].decode()

    def _stderr_tail(self, n=4000):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout=20):
        """SIGTERM the box by PID, SIGKILL it after ``timeout`` seconds."""
        proc = self.proc
        if proc is not None:
            if proc.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    try:
                        os.kill(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    proc.wait(timeout=10)
            for f in (proc.stdin, proc.stdout):
                try:
                    f.close()
                except OSError:
                    pass
            self.returncode = proc.returncode
            self.proc = None
        if getattr(self, "_stderr", None) is not None:
            self._stderr.close()
            self._stderr = None
        if self._own_state_dir and not self.keep_state_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    # -- control API -------------------------------------------------------
    def control(self, method, path, body=None, timeout=60):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.control_url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = raw.decode(errors="replace")
            raise ControlError(e.code, payload) from None

    def hosts(self):
        """``{"host1": {"running": True, "instances_on_driver": N}, ...}``"""
        return self.control("GET", "/hosts")

    def crash(self, host):
        """Power loss: the compute stops at once (no heartbeat, no RPC)."""
        return self.control("POST", f"/hosts/{host}/crash")

    def start(self, host):
        """Power on: a fresh nova-compute starts for ``host`` (idempotent)."""
        return self.control("POST", f"/hosts/{host}/start", timeout=120)

    def create_servers(
        self,
        host,
        count=1,
        name_prefix="vm",
        flavor_extra_specs=None,
        metadata=None,
        image=None,
        flavor=None,
        wait=True,
        timeout=300,
    ):
        """Create ``count`` servers on ``host`` through the real API.

        ``image``: None/"default", "evacuable" (properties evacuable=true) or
        an image id. ``flavor``: a flavor id (default m1.tiny); or
        ``flavor_extra_specs`` to use (and create once) a flavor with those
        extra specs. Returns the server ids; with ``wait`` all are ACTIVE.
        """
        body = {
            "host": host,
            "count": count,
            "name_prefix": name_prefix,
            "wait": wait,
            "timeout": timeout,
        }
        if flavor_extra_specs is not None:
            body["flavor_extra_specs"] = flavor_extra_specs
        if metadata is not None:
            body["metadata"] = metadata
        if image is not None:
            body["image"] = image
        if flavor is not None:
            body["flavor"] = flavor
        return self.control("POST", "/servers", body, timeout=timeout + 30)["ids"]

    def request_log(self):
        """Every compute API request, in order of arrival: dicts with ``t``
        (time.time() on arrival), ``method``, ``path`` (from ``/v2.1``),
        ``query``, ``action`` (first key of an action body), ``status``,
        ``microversion`` (answered) and ``requested_microversion``."""
        return self.control("GET", "/log")

    def clear_request_log(self):
        return self.control("DELETE", "/log")["cleared"]

    def set_api_down(self, down=True, mode="503"):
        """Compute API down (503, or mode="reset": connection reset) / up."""
        return self.control("POST", "/api", {"down": bool(down), "mode": mode})

    def set_rebuild_delay(self, seconds: float) -> dict:
        """Slow rebuilds: every spawn of the fake driver, on every host, takes
        ``seconds`` (0, the default: none). That is every evacuation, rebuild,
        build and unshelve; an evacuated server spends them in task_state
        ``rebuild_spawning``. Spawns already under way keep the delay they
        started with. A host that crashes during a delayed spawn never ends
        it (as if its process had died). Returns ``{"seconds": ...}``.

        The ``nova_box`` pytest plugin (fixtures.py) sets it back to 0 after
        every test; outside pytest, callers reset it themselves
        (``set_rebuild_delay(0)`` or ``reset_faults()``).
        """
        seconds = float(seconds)
        if not 0 <= seconds <= 3600:
            raise ValueError(f"rebuild delay must be in [0, 3600] s, not {seconds}")
        answer = self.control("POST", "/rebuild_delay", {"seconds": seconds})
        if seconds > 0:
            DELAYED_BOXES.add(self)
        else:
            DELAYED_BOXES.discard(self)
        return answer

    def rebuild_delay(self) -> float:
        """The current delay of fake driver spawns/rebuilds, in seconds."""
        return self.control("GET", "/rebuild_delay")["seconds"]

    def reset_faults(self):
        """Back to a healthy box: compute API up, no rebuild delay."""
        self.set_api_down(False)
        self.set_rebuild_delay(0)

    def revoke_tokens(self):
        """Invalidate every token issued so far (clients must re-auth)."""
        return self.control("POST", "/tokens/revoke")["revoked"]

    def info(self):
        return self.control("GET", "/info")

    def rss_kb(self):
        """Resident memory of the box process, in kB."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return None


def _url_host(addr):
    return f"[{addr}]" if ":" in addr else addr
