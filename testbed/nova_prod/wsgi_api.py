"""The compute API application of the production-shaped bed, for gunicorn.

``gunicorn testbed.nova_prod.wsgi_api:application`` with ``OS_NOVA_CONFIG_DIR`` and
``OS_NOVA_CONFIG_FILES`` set: Nova's own WSGI entry point (nova.wsgi.osapi_compute, the
one uwsgi or mod_wsgi would load), after the bed's fakes for Glance/Neutron/Cinder
(fakes.py) are loaded into the worker.
"""

from __future__ import annotations

import os
import sys

# Nova parses sys.argv as its own command line: gunicorn's is not.
sys.argv = ["nova-api"]
os.environ.setdefault("OS_NOVA_DISABLE_EVENTLET_PATCHING", "1")  # native threads

from testbed.nova_prod import fakes  # noqa: E402

fakes.install_fakes()

from nova.wsgi import osapi_compute  # noqa: E402

application = osapi_compute.application
