"""The configuration files and command lines of the production-shaped bed's services."""

from __future__ import annotations

import os
import shutil
import sys
from typing import Any

NOVA_CONF = """\
[DEFAULT]
host = controller
my_ip = 127.0.0.1
compute_driver = fake.FakeDriver
transport_url = {transport_url}
state_path = {d}/state
instances_path = {d}/instances
tempdir = {d}/tmp
debug = {debug}
use_stderr = false
report_interval = {report_interval}
service_down_time = {service_down_time}
graceful_shutdown_timeout = 5
heal_instance_info_cache_interval = -1
instance_usage_audit = false
[wsgi]
api_paste_config = {d}/etc/nova/api-paste.ini
[api_database]
connection = {api_db}
max_pool_size = 10
max_overflow = 20
[database]
connection = {cell1_db}
max_pool_size = 10
max_overflow = 20
[conductor]
workers = {workers}
[scheduler]
workers = {workers}
discover_hosts_in_cells_interval = -1
[filter_scheduler]
build_failure_weight_multiplier = 0.0
[placement]
auth_type = admin_token
endpoint = {placement_url}
token = admin
region_name = RegionOne
[glance]
api_servers = http://glance.invalid:9292
[oslo_messaging_notifications]
driver = noop
[oslo_concurrency]
lock_path = {d}/locks
[quota]
instances = -1
cores = -1
ram = -1
metadata_items = -1
"""

# nova-api only: keystonemiddleware checks every token with the bed's Keystone (no cache,
# so that a revoked token is refused at once).
NOVA_API_CONF = """\
[DEFAULT]
log_file = {d}/logs/nova-api.log
[keystone_authtoken]
www_authenticate_uri = {identity}
auth_url = {identity}
auth_type = password
username = admin
password = secret
project_name = admin
user_domain_name = Default
project_domain_name = Default
token_cache_time = -1
http_connect_timeout = 10
http_request_max_retries = 3
"""

COMPUTE_CONF = """\
[DEFAULT]
host = {host}
state_path = {d}/hosts/{host}/state
instances_path = {d}/hosts/{host}/instances
"""

PLACEMENT_CONF = """\
[DEFAULT]
debug = {debug}
log_file = {d}/logs/placement-api.log
[api]
auth_strategy = noauth2
[placement_database]
connection = {placement_db}
max_pool_size = 10
max_overflow = 20
"""


def write_all(bed: Any) -> dict[str, str]:
    """Write every file; returns their paths by name (nova, nova-api, placement, HOST)."""
    d = bed.state_dir
    for sub in ("etc/nova", "etc/placement", "state", "instances", "tmp", "locks", "logs"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    paste = os.path.join(sys.prefix, "etc", "nova", "api-paste.ini")
    shutil.copy(paste, os.path.join(d, "etc", "nova", "api-paste.ini"))
    values = {
        "d": d,
        "debug": str(bool(bed.args.debug)).lower(),
        "transport_url": bed.rabbit.transport_url,
        "report_interval": bed.args.report_interval,
        "service_down_time": bed.args.service_down_time,
        "api_db": bed.mariadb.url("nova_api"),
        "cell1_db": bed.mariadb.url("nova"),
        "placement_db": bed.mariadb.url("placement"),
        "workers": bed.args.service_workers,
        "placement_url": f"http://127.0.0.1:{bed.placement_port}",
        "identity": bed.public_base + "/identity",
    }
    paths = {
        "nova": _write(d, "etc/nova/nova.conf", NOVA_CONF, values),
        "nova-api": _write(d, "etc/nova/nova-api.conf", NOVA_API_CONF, values),
        "placement": _write(d, "etc/placement/placement.conf", PLACEMENT_CONF, values),
    }
    for host in bed.hosts:
        for sub in ("state", "instances"):
            os.makedirs(os.path.join(d, "hosts", host, sub), exist_ok=True)
        paths[host] = _write(d, f"hosts/{host}/nova.conf", COMPUTE_CONF, dict(values, host=host))
    return paths


def _write(d: str, name: str, template: str, values: dict) -> str:
    path = os.path.join(d, name)
    with open(path, "w") as f:
        f.write(template.format(**values))
    os.chmod(path, 0o600)  # database and Keystone passwords
    return path


def _gunicorn(bed: Any, name: str, port: int, workers: int, app: str) -> list[str]:
    return [
        os.path.join(os.path.dirname(sys.executable), "gunicorn"),
        f"--workers={workers}",
        "--worker-class=gthread",
        "--threads=8",
        f"--bind=127.0.0.1:{port}",
        "--timeout=300",  # a worker's first request loads Nova: slow on a busy machine
        "--graceful-timeout=5",
        "--no-control-socket",  # else one socket under $HOME for every gunicorn
        f"--name={name}",
        f"--error-logfile={bed.state_dir}/logs/{name}.gunicorn.log",
        app,
    ]


def placement_command(bed: Any) -> list[str]:
    return _gunicorn(
        bed,
        "placement",
        bed.placement_port,
        bed.args.placement_workers,
        "placement.wsgi.api:application",
    )


def api_command(bed: Any) -> list[str]:
    return _gunicorn(
        bed,
        "nova-api",
        bed.api_port,
        bed.args.api_workers,
        "testbed.nova_prod.wsgi_api:application",
    )


def service_command(bed: Any, binary: str, host: str | None = None) -> list[str]:
    """conductor, scheduler or a compute, through the bed's launcher (service.py)."""
    cmd = [sys.executable, "-m", "testbed.nova_prod.service", binary, "--state-dir", bed.state_dir]
    configs = ["--config-file", bed.conf["nova"]]
    log = f"{bed.state_dir}/logs/{binary}.log"
    if host is not None:
        cmd += ["--host", host]
        configs += ["--config-file", bed.conf[host]]
        log = f"{bed.state_dir}/logs/nova-compute-{host}.log"
    return cmd + ["--"] + configs + ["--log-file", log]


def compute_command(bed: Any, host: str) -> list[str]:
    return service_command(bed, "nova-compute", host)
