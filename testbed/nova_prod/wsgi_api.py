"""The compute API application of the production-shaped bed, for gunicorn.

``gunicorn testbed.nova_prod.wsgi_api:application`` with ``OS_NOVA_CONFIG_DIR`` and
``OS_NOVA_CONFIG_FILES`` set: Nova's own WSGI entry point (nova.wsgi.osapi_compute, the
one uwsgi or mod_wsgi would load), after the bed's fakes for Glance/Neutron/Cinder
(fakes.py) are loaded into the worker.
"""

from __future__ import annotations

import os

os.environ.setdefault("OS_NOVA_DISABLE_EVENTLET_PATCHING", "1")  # native threads

import nova.conf  # noqa: E402

from testbed.nova_prod import fakes  # noqa: E402

fakes.install_fakes(nova.conf.CONF)

from nova.wsgi import osapi_compute  # noqa: E402

application = osapi_compute.application
