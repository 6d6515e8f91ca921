"""A real Nova 34 in one process, for nova-ha's tests.

Run with the Nova venv's interpreter (``.venv-nova/bin/python server.py``).
One process holds:

* the real Nova compute API (paste pipeline from the wheel's
  ``<venv>/etc/nova/api-paste.ini``), with keystonemiddleware's ``authtoken``
  filter replaced by a token shim that accepts only tokens issued by the
  minimal Keystone below and maps them to a project-scoped admin context;
* a real nova-conductor, nova-scheduler and placement (its WSGI app, served
  under ``/placement`` and used by Nova over HTTP);
* one real nova-compute service per host, with ``nova.virt.fake.FakeDriver``
  (1000 vCPUs, 800 GB RAM: ~100+ servers fit on one host);
* Nova's functional-test fakes for Glance, Neutron and Cinder;
* file-backed sqlite databases (API, cell0, cell1; WAL mode, 30 s busy
  timeout) with real cell mappings, and the ``fake:/`` messaging transport;
* a minimal Keystone v3 under ``/identity`` and a JSON control API under
  ``/_testbed``.

Everything is served by a threaded wsgiref server on one port, on every
``--bind`` address. The first ``--bind`` address is the one the catalog uses.

Heartbeats: ``report_interval`` defaults to 1 s and ``service_down_time`` to
6 s: a crashed compute is reported down by the API 6-7 s after its crash,
and a live compute keeps 5 s of slack for a busy (2-core) machine.

On start-up one JSON line is printed on stdout:
``{"port": N, "auth_url": ..., "compute_url": ..., "pid": ...}``.
SIGTERM / SIGINT (or EOF on stdin with ``--exit-on-stdin-eof``) stops every
service and the process exits with status 0.
"""

import os
import sys

# This directory holds the test suite's fixtures.py, which would shadow the
# "fixtures" library that Nova's test fakes import: drop it from sys.path.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import argparse  # noqa: E402
import hashlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import secrets  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import socketserver  # noqa: E402
import sqlite3  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import uuid  # noqa: E402
from datetime import UTC, datetime, timedelta  # noqa: E402
from wsgiref import simple_server  # noqa: E402

# Native threading, never eventlet: must be set before anything imports nova.
os.environ["OS_NOVA_DISABLE_EVENTLET_PATCHING"] = "1"

ADMIN_USER = "admin"
ADMIN_USER_ID = "a0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5"
ADMIN_PASSWORD = "secret"
ADMIN_PROJECT = "admin"
ADMIN_PROJECT_ID = "6f70656e737461636b20342065766572"
DOMAIN_ID = "default"
DOMAIN_NAME = "Default"
APP_CRED_ID = "appcred-id"
APP_CRED_SECRET = "appcred-secret"
APP_CRED_NAME = "nova-ha"
REGION = "RegionOne"

# Images (Glance fake). The default image is the functional fixture's image1.
IMAGE_DEFAULT = "155d900f-4e14-4e4c-a73d-069cbf4541e6"
IMAGE_EVACUABLE = "e7ac0ab1-0000-4000-8000-00000000e7ac"
# Flavors created at boot: (flavorid, name, vcpus, ram MB, disk GB, extra specs)
FLAVORS = [
    ("1", "m1.tiny", 1, 512, 1, {}),
    ("2", "m1.small", 1, 2048, 20, {}),
    ("100", "m1.evacuable", 1, 512, 1, {"evacuable": "true"}),
]
FLAVOR_DEFAULT = "1"
FLAVOR_EVACUABLE = "100"

LOG = None  # oslo.log logger, set once nova is imported


def _utcnow():
    return datetime.now(UTC)


def _iso(dt):
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _json_response(start_response, status, body, headers=()):
    data = json.dumps(body).encode()
    reason = {
        200: "OK",
        201: "Created",
        202: "Accepted",
        204: "No Content",
        300: "Multiple Choices",
        400: "Bad Request",
        401: "Unauthorized",
        404: "Not Found",
        405: "Method Not Allowed",
        409: "Conflict",
        500: "Internal Server Error",
        503: "Service Unavailable",
    }.get(status, "Status")
    hdrs = [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    hdrs.extend(headers)
    start_response(f"{status} {reason}", hdrs)
    return [data]


def _read_body(environ):
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    body = environ["wsgi.input"].read(length) if length > 0 else b""
    # Let a downstream app read it again.
    environ["wsgi.input"] = io.BytesIO(body)
    return body


# --------------------------------------------------------------------------
# Keystone
# --------------------------------------------------------------------------
class Keystone:
    """Minimal Keystone v3: password and application_credential auth."""

    TOKEN_LIFETIME = timedelta(hours=24)

    def __init__(self, box):
        self.box = box
        self._tokens = {}
        self._lock = threading.Lock()

    # -- token store -------------------------------------------------------
    def issue(self, methods, app_cred=False, internal=False):
        token = secrets.token_urlsafe(32)
        now = _utcnow()
        info = {
            "methods": methods,
            "issued_at": now,
            "expires_at": now + self.TOKEN_LIFETIME,
            "app_cred": app_cred,
            "internal": internal,
            "audit_id": secrets.token_urlsafe(16)[:22],
        }
        with self._lock:
            self._tokens[token] = info
        return token, info

    def validate(self, token):
        if not token:
            return None
        with self._lock:
            info = self._tokens.get(token)
        if info is None or info["expires_at"] <= _utcnow():
            return None
        return info

    def revoke(self, token):
        with self._lock:
            return self._tokens.pop(token, None) is not None

    def revoke_all(self):
        with self._lock:
            n = 0
            for token in [t for t, i in self._tokens.items() if not i["internal"]]:
                del self._tokens[token]
                n += 1
        return n

    # -- documents ---------------------------------------------------------
    def _base(self, environ):
        return f"{self.box.public_base}/identity"

    def _version_doc(self, environ):
        return {
            "id": "v3.14",
            "status": "stable",
            "updated": "2020-04-07T00:00:00Z",
            "links": [{"rel": "self", "href": self._base(environ) + "/v3/"}],
            "media-types": [
                {"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}
            ],
        }

    def catalog(self):
        def service(stype, name, url):
            return {
                "id": hashlib.md5(stype.encode()).hexdigest(),
                "type": stype,
                "name": name,
                "endpoints": [
                    {
                        "id": hashlib.md5((stype + iface).encode()).hexdigest(),
                        "interface": iface,
                        "region": REGION,
                        "region_id": REGION,
                        "url": url,
                    }
                    for iface in ("public", "internal", "admin")
                ],
            }

        return [
            service("compute", "nova", self.box.compute_url),
            service("identity", "keystone", self.box.public_base + "/identity"),
            service("image", "glance", self.box.public_base + "/image"),
            service("placement", "placement", self.box.public_base + "/placement"),
        ]

    def token_body(self, info, catalog=True):
        domain = {"id": DOMAIN_ID, "name": DOMAIN_NAME}
        body = {
            "methods": info["methods"],
            "user": {
                "id": ADMIN_USER_ID,
                "name": ADMIN_USER,
                "domain": domain,
                "password_expires_at": None,
            },
            "project": {"id": ADMIN_PROJECT_ID, "name": ADMIN_PROJECT, "domain": domain},
            "roles": [
                {"id": hashlib.md5(r.encode()).hexdigest(), "name": r}
                for r in ("admin", "member", "reader")
            ],
            "is_domain": False,
            "expires_at": _iso(info["expires_at"]),
            "issued_at": _iso(info["issued_at"]),
            "audit_ids": [info["audit_id"]],
        }
        if info["app_cred"]:
            body["application_credential"] = {
                "id": APP_CRED_ID,
                "name": APP_CRED_NAME,
                "restricted": True,
            }
        if catalog:
            body["catalog"] = self.catalog()
        return {"token": body}

    # -- WSGI --------------------------------------------------------------
    @staticmethod
    def _unauthorized(start_response, message=None):
        return _json_response(
            start_response,
            401,
            {
                "error": {
                    "code": 401,
                    "title": "Unauthorized",
                    "message": message or "The request you have made requires authentication.",
                }
            },
        )

    def _check_domain(self, d):
        if not d:
            return True
        return d.get("id") == DOMAIN_ID or d.get("name") == DOMAIN_NAME

    def _authenticate(self, auth):
        identity = auth.get("identity") or {}
        methods = identity.get("methods") or []
        if "password" in methods:
            user = (identity.get("password") or {}).get("user") or {}
            name_ok = user.get("id") == ADMIN_USER_ID or (
                user.get("name") == ADMIN_USER and self._check_domain(user.get("domain"))
            )
            if not name_ok or user.get("password") != ADMIN_PASSWORD:
                return None, "The request you have made requires authentication."
            scope = auth.get("scope")
            if scope is not None:
                project = scope.get("project")
                if not project:
                    return None, "Only project scope is supported here."
                if not (
                    project.get("id") == ADMIN_PROJECT_ID
                    or (
                        project.get("name") == ADMIN_PROJECT
                        and self._check_domain(project.get("domain"))
                    )
                ):
                    return None, "User has no access to that project."
            return self.issue(["password"]), None
        if "application_credential" in methods:
            cred = identity.get("application_credential") or {}
            if cred.get("id") == APP_CRED_ID or (cred.get("name") == APP_CRED_NAME):
                if cred.get("secret") == APP_CRED_SECRET:
                    return self.issue(["application_credential"], app_cred=True), None
            return None, "The request you have made requires authentication."
        if "token" in methods:
            old = (identity.get("token") or {}).get("id")
            info = self.validate(old)
            if info is None:
                return None, "Could not find token."
            return self.issue(info["methods"] + ["token"], app_cred=info["app_cred"]), None
        return None, "Unsupported authentication method."

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "").rstrip("/")
        method = environ["REQUEST_METHOD"]
        if path == "" and method == "GET":
            return _json_response(
                start_response, 300, {"versions": {"values": [self._version_doc(environ)]}}
            )
        if path == "/v3" and method == "GET":
            return _json_response(start_response, 200, {"version": self._version_doc(environ)})
        if path == "/v3/auth/tokens":
            if method == "POST":
                try:
                    auth = json.loads(_read_body(environ) or b"{}")["auth"]
                except (ValueError, KeyError, TypeError):
                    return _json_response(
                        start_response,
                        400,
                        {
                            "error": {
                                "code": 400,
                                "title": "Bad Request",
                                "message": "Malformed auth request",
                            }
                        },
                    )
                issued, err = self._authenticate(auth)
                if issued is None:
                    return self._unauthorized(start_response, err)
                token, info = issued
                nocatalog = "nocatalog" in environ.get("QUERY_STRING", "")
                return _json_response(
                    start_response,
                    201,
                    self.token_body(info, catalog=not nocatalog),
                    headers=[("X-Subject-Token", token)],
                )
            caller = self.validate(environ.get("HTTP_X_AUTH_TOKEN"))
            if caller is None:
                return self._unauthorized(start_response)
            subject = environ.get("HTTP_X_SUBJECT_TOKEN")
            if method in ("GET", "HEAD"):
                info = self.validate(subject)
                if info is None:
                    return _json_response(
                        start_response,
                        404,
                        {
                            "error": {
                                "code": 404,
                                "title": "Not Found",
                                "message": "Could not find token.",
                            }
                        },
                    )
                return _json_response(
                    start_response,
                    200,
                    self.token_body(info),
                    headers=[("X-Subject-Token", subject)],
                )
            if method == "DELETE":
                if not self.revoke(subject):
                    return _json_response(
                        start_response,
                        404,
                        {
                            "error": {
                                "code": 404,
                                "title": "Not Found",
                                "message": "Could not find token.",
                            }
                        },
                    )
                start_response("204 No Content", [("Content-Length", "0")])
                return [b""]
        if path == "/v3/auth/catalog" and method == "GET":
            if self.validate(environ.get("HTTP_X_AUTH_TOKEN")) is None:
                return self._unauthorized(start_response)
            return _json_response(start_response, 200, {"catalog": self.catalog()})
        return _json_response(
            start_response,
            404,
            {
                "error": {
                    "code": 404,
                    "title": "Not Found",
                    "message": "Not supported by this test Keystone.",
                }
            },
        )


class TokenShim:
    """Replaces keystonemiddleware's authtoken filter in Nova's pipeline."""

    _STRIP = (
        "HTTP_X_IDENTITY_STATUS",
        "HTTP_X_SERVICE_IDENTITY_STATUS",
        "HTTP_X_USER_ID",
        "HTTP_X_USER_NAME",
        "HTTP_X_USER",
        "HTTP_X_USER_DOMAIN_ID",
        "HTTP_X_USER_DOMAIN_NAME",
        "HTTP_X_PROJECT_ID",
        "HTTP_X_PROJECT_NAME",
        "HTTP_X_TENANT_ID",
        "HTTP_X_TENANT_NAME",
        "HTTP_X_TENANT",
        "HTTP_X_PROJECT_DOMAIN_ID",
        "HTTP_X_PROJECT_DOMAIN_NAME",
        "HTTP_X_ROLES",
        "HTTP_X_ROLE",
        "HTTP_X_SERVICE_CATALOG",
        "HTTP_X_SYSTEM_SCOPE",
        "HTTP_OPENSTACK_SYSTEM_SCOPE",
        "HTTP_X_IS_ADMIN_PROJECT",
    )

    def __init__(self, app, keystone):
        self.app = app
        self.keystone = keystone

    def __call__(self, environ, start_response):
        for key in self._STRIP:
            environ.pop(key, None)
        info = self.keystone.validate(environ.get("HTTP_X_AUTH_TOKEN"))
        if info is None:
            return _json_response(
                start_response,
                401,
                {
                    "error": {
                        "code": 401,
                        "title": "Unauthorized",
                        "message": "The request you have made requires authentication.",
                    }
                },
                headers=[
                    (
                        "WWW-Authenticate",
                        f'Keystone uri="{self.keystone.box.public_base}/identity"',
                    )
                ],
            )
        environ.update(
            {
                "HTTP_X_IDENTITY_STATUS": "Confirmed",
                "HTTP_X_USER_ID": ADMIN_USER_ID,
                "HTTP_X_USER_NAME": ADMIN_USER,
                "HTTP_X_USER_DOMAIN_ID": DOMAIN_ID,
                "HTTP_X_USER_DOMAIN_NAME": DOMAIN_NAME,
                "HTTP_X_PROJECT_ID": ADMIN_PROJECT_ID,
                "HTTP_X_PROJECT_NAME": ADMIN_PROJECT,
                "HTTP_X_PROJECT_DOMAIN_ID": DOMAIN_ID,
                "HTTP_X_PROJECT_DOMAIN_NAME": DOMAIN_NAME,
                "HTTP_X_ROLES": "admin,member,reader",
                "HTTP_X_IS_ADMIN_PROJECT": "True",
            }
        )
        return self.app(environ, start_response)


class PlacementFront:
    """Placement (noauth2) for clients of the box's Keystone: Nova's own token ("admin")
    passes; a token the box's Keystone issued is placement's admin; anything else is 401."""

    def __init__(self, box):
        self.box = box

    def __call__(self, environ, start_response):
        token = environ.get("HTTP_X_AUTH_TOKEN")
        if token != "admin":
            if self.box.keystone.validate(token) is None:
                return _json_response(start_response, 401, {"error": "bad token"})
            environ["HTTP_X_AUTH_TOKEN"] = "admin"
        return self.box.placement_app(environ, start_response)


class GlanceV2:
    """Read-only Glance v2 (image show/list) over Nova's fake Glance data."""

    def __init__(self, box):
        self.box = box

    def _image_doc(self, image):
        def ts(value):
            if isinstance(value, datetime):
                return value.strftime("%Y-%m-%dT%H:%M:%SZ")
            return value

        doc = {
            "id": image["id"],
            "name": image.get("name"),
            "status": image.get("status", "active"),
            "visibility": image.get("visibility", "public"),
            "protected": bool(image.get("protected", False)),
            "tags": list(image.get("tags") or []),
            "container_format": image.get("container_format"),
            "disk_format": image.get("disk_format"),
            "min_disk": image.get("min_disk") or 0,
            "min_ram": image.get("min_ram") or 0,
            "size": image.get("size"),
            "owner": image.get("owner"),
            "created_at": ts(image.get("created_at")),
            "updated_at": ts(image.get("updated_at")),
            "self": "/v2/images/{}".format(image["id"]),
            "file": "/v2/images/{}/file".format(image["id"]),
            "schema": "/v2/schemas/image",
        }
        # Glance v2 shows custom properties as top-level keys.
        for key, value in (image.get("properties") or {}).items():
            doc.setdefault(key, value)
        return doc

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "").rstrip("/")
        if path in ("", "/versions") and environ["REQUEST_METHOD"] == "GET":
            return _json_response(
                start_response,
                200,
                {
                    "versions": [
                        {
                            "id": "v2.16",
                            "status": "CURRENT",
                            "links": [{"rel": "self", "href": self.box.public_base + "/image/v2/"}],
                        }
                    ]
                },
            )
        if self.box.keystone.validate(environ.get("HTTP_X_AUTH_TOKEN")) is None:
            return Keystone._unauthorized(start_response)
        if environ["REQUEST_METHOD"] != "GET":
            return _json_response(start_response, 405, {"error": "read-only test Glance"})
        images = self.box.glance.images
        if path == "/v2/images":
            return _json_response(
                start_response,
                200,
                {
                    "images": [self._image_doc(i) for i in images.values()],
                    "schema": "/v2/schemas/images",
                    "first": "/v2/images",
                },
            )
        if path.startswith("/v2/images/"):
            image = images.get(path[len("/v2/images/") :])
            if image is None:
                return _json_response(start_response, 404, {"error": "image not found"})
            return _json_response(start_response, 200, self._image_doc(image))
        return _json_response(start_response, 404, {"error": "not found"})


# --------------------------------------------------------------------------
# Compute API front: request log and "API down"
# --------------------------------------------------------------------------
class ComputeFront:
    def __init__(self, box):
        self.box = box
        self.app = None  # the real Nova osapi_compute app
        self._log = []
        self._lock = threading.Lock()
        self.down = False
        self.down_mode = "503"

    def record(self, environ):
        entry = {
            "t": time.time(),
            "method": environ["REQUEST_METHOD"],
            "path": environ.get("PATH_INFO") or "/",
            "query": environ.get("QUERY_STRING", ""),
            "action": None,
            "status": None,
            "microversion": None,
            "requested_microversion": _requested_microversion(environ),
        }
        with self._lock:
            self._log.append(entry)
        return entry

    def log(self):
        with self._lock:
            return [dict(e) for e in self._log]

    def clear_log(self):
        with self._lock:
            n = len(self._log)
            self._log = []
        return n

    def __call__(self, environ, start_response):
        entry = self.record(environ)
        if not environ.get("PATH_INFO"):
            environ["PATH_INFO"] = "/"
        if environ["REQUEST_METHOD"] == "POST" and entry["path"].rstrip("/").endswith("/action"):
            try:
                body = json.loads(_read_body(environ) or b"null")
                if isinstance(body, dict) and body:
                    entry["action"] = next(iter(body))
            except ValueError:
                pass
        if self.down or self.app is None:
            entry["status"] = 503
            return _json_response(
                start_response,
                503,
                {"message": "Service Unavailable (nova box: compute API down)", "code": 503},
            )

        def _start_response(status, headers, exc_info=None):
            try:
                entry["status"] = int(status.split()[0])
            except ValueError:
                pass
            for name, value in headers:
                if name.lower() == "openstack-api-version":
                    entry["microversion"] = value.split()[-1]
                elif (
                    name.lower() == "x-openstack-nova-api-version" and entry["microversion"] is None
                ):
                    entry["microversion"] = value
            return start_response(status, headers, exc_info)

        return self.app(environ, _start_response)


def _requested_microversion(environ):
    value = environ.get("HTTP_OPENSTACK_API_VERSION")
    if value:
        for part in value.split(","):
            words = part.split()
            if len(words) == 2 and words[0].lower() == "compute":
                return words[1]
    return environ.get("HTTP_X_OPENSTACK_NOVA_API_VERSION")


# --------------------------------------------------------------------------
# HTTP server
# --------------------------------------------------------------------------
class _Handler(simple_server.WSGIRequestHandler):
    def log_message(self, fmt, *args):  # quiet: Nova logs requests itself
        pass

    def handle(self):
        self.raw_requestline = self.rfile.readline(65537)
        if len(self.raw_requestline) > 65536:
            self.send_error(414)
            return
        if not self.parse_request():
            return
        box = self.server.box
        path = self.path.split("?", 1)[0]
        if (
            box.front.down
            and box.front.down_mode == "reset"
            and (path == "/compute" or path.startswith("/compute/"))
        ):
            entry = box.front.record(
                {"REQUEST_METHOD": self.command, "PATH_INFO": path[len("/compute") :]}
            )
            entry["status"] = None
            entry["dropped"] = True
            self.connection.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
            self.close_connection = True
            return
        handler = simple_server.ServerHandler(
            self.rfile, self.wfile, self.get_stderr(), self.get_environ(), multithread=True
        )
        handler.request_handler = self
        handler.run(self.server.get_app())


class _Server(socketserver.ThreadingMixIn, simple_server.WSGIServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def handle_error(self, request, client_address):
        if LOG is not None:
            LOG.debug("HTTP connection error from %s", client_address, exc_info=True)


class Dispatcher:
    def __init__(self, box):
        self.box = box

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        for prefix, app in (
            ("/compute", self.box.front),
            ("/identity", self.box.keystone),
            ("/placement", self.box.placement_app and self.box.placement_front),
            ("/image", self.box.glance_api),
            ("/_testbed", self.box.control),
        ):
            if path == prefix or path.startswith(prefix + "/"):
                if app is None:
                    return _json_response(start_response, 503, {"error": "booting"})
                environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + prefix
                environ["PATH_INFO"] = path[len(prefix) :]
                try:
                    return app(environ, start_response)
                except Exception:
                    if LOG:
                        LOG.exception("Unhandled error for %s", path)
                    return _json_response(start_response, 500, {"error": traceback.format_exc()})
        return _json_response(
            start_response,
            404,
            {
                "error": "not found",
                "prefixes": ["/compute", "/identity", "/placement", "/image", "/_testbed"],
            },
        )


# --------------------------------------------------------------------------
# Control API
# --------------------------------------------------------------------------
class Control:
    def __init__(self, box):
        self.box = box

    def __call__(self, environ, start_response):
        method = environ["REQUEST_METHOD"]
        parts = [p for p in environ.get("PATH_INFO", "").split("/") if p]
        try:
            body = _read_body(environ)
            data = json.loads(body) if body.strip() else {}
        except ValueError:
            return _json_response(start_response, 400, {"error": "bad JSON"})
        box = self.box
        try:
            if parts == ["hosts"] and method == "GET":
                return _json_response(start_response, 200, box.hosts_state())
            if len(parts) == 3 and parts[0] == "hosts" and method == "POST":
                host = parts[1]
                if host not in box.computes:
                    return _json_response(start_response, 404, {"error": f"unknown host {host}"})
                if parts[2] == "crash":
                    box.computes[host].crash()
                elif parts[2] == "start":
                    box.computes[host].start()
                else:
                    return _json_response(start_response, 404, {"error": "unknown action"})
                return _json_response(start_response, 200, box.hosts_state()[host])
            if parts == ["servers"] and method == "POST":
                ids = box.create_servers(**data)
                return _json_response(start_response, 200, {"ids": ids})
            if parts == ["log"] and method == "GET":
                return _json_response(start_response, 200, box.front.log())
            if parts == ["log"] and method == "DELETE":
                return _json_response(start_response, 200, {"cleared": box.front.clear_log()})
            if parts == ["api"] and method == "GET":
                return _json_response(
                    start_response, 200, {"down": box.front.down, "mode": box.front.down_mode}
                )
            if parts == ["api"] and method == "POST":
                mode = data.get("mode", "503")
                if mode not in ("503", "reset"):
                    return _json_response(
                        start_response, 400, {"error": "mode must be '503' or 'reset'"}
                    )
                box.front.down_mode = mode
                box.front.down = bool(data.get("down"))
                return _json_response(
                    start_response, 200, {"down": box.front.down, "mode": box.front.down_mode}
                )
            if parts == ["rebuild_delay"] and method == "GET":
                return _json_response(start_response, 200, {"seconds": box.rebuild_delay})
            if parts == ["rebuild_delay"] and method == "POST":
                try:
                    seconds = float(data.get("seconds", 0))
                except (TypeError, ValueError):
                    seconds = -1.0
                if not 0 <= seconds <= 3600:
                    return _json_response(
                        start_response, 400, {"error": "seconds must be a number in [0, 3600]"}
                    )
                box.rebuild_delay = seconds
                LOG.info("nova box: fake driver spawn/rebuild delay %.3fs", seconds)
                return _json_response(start_response, 200, {"seconds": box.rebuild_delay})
            if parts == ["tokens", "revoke"] and method == "POST":
                return _json_response(start_response, 200, {"revoked": box.keystone.revoke_all()})
            if parts == ["info"] and method == "GET":
                return _json_response(start_response, 200, box.info())
        except BoxError as e:
            return _json_response(start_response, e.status, {"error": str(e)})
        return _json_response(start_response, 404, {"error": "not found"})


class BoxError(Exception):
    def __init__(self, msg, status=400):
        super().__init__(msg)
        self.status = status


# --------------------------------------------------------------------------
# Nova glue
# --------------------------------------------------------------------------
class _Harness:
    """Just enough of a test case for Nova's Glance/Neutron/Cinder fakes."""

    def __init__(self, conf):
        self.conf = conf
        self._fixtures = []

    def useFixture(self, fixture):  # noqa: N802 (fixtures API)
        fixture.setUp()
        self._fixtures.append(fixture)
        return fixture

    def stub_out(self, old, new):
        import fixtures

        self.useFixture(fixtures.MonkeyPatch(old, new))

    def flags(self, **kw):
        group = kw.pop("group", None)
        for k, v in kw.items():
            self.conf.set_override(k, v, group)


class _DeadServiceRef:
    """Stands in for a crashed service's DB record: heartbeats go nowhere."""

    report_count = 0

    def save(self):
        pass


class ComputeHost:
    def __init__(self, box, name):
        self.box = box
        self.name = name
        self.service = None
        self.lock = threading.Lock()
        self.started_once = False
        self._dead = []  # crashed services, kept so nothing is collected
        self._driver_state = None
        # Set when this life of the compute loses power (see _slow_fake_spawn).
        self.power_lost = threading.Event()

    @property
    def running(self):
        return self.service is not None

    def start(self):
        from nova import service as nova_service
        from nova.compute import power_state
        from nova.compute import rpcapi as compute_rpcapi

        with self.lock:
            if self.service is not None:
                return
            t0 = time.time()
            svc = nova_service.Service.create(
                binary="nova-compute",
                host=self.name,
                topic="compute",
                topic_alt=compute_rpcapi.RPC_TOPIC_ALT,
            )
            if self._driver_state is not None:
                # A powered-on host still has its guests' definitions, all
                # shut off: nova-compute's init_host then destroys those that
                # were evacuated and completes their migrations.
                instances, resources = self._driver_state
                for inst in instances.values():
                    inst.state = power_state.SHUTDOWN
                svc.manager.driver.instances = instances
                svc.manager.driver.resources = resources
                self._driver_state = None
            self.power_lost = threading.Event()
            svc.manager.driver._nova_box_power_lost = self.power_lost
            svc.start()
            if not self.started_once:
                self.box.map_hosts()
                self.started_once = True
            self.service = svc
            LOG.info("nova box: compute %s started in %.2fs", self.name, time.time() - t0)

    def crash(self):
        with self.lock:
            svc = self.service
            if svc is None:
                return
            self.service = None
            self.power_lost.set()  # before the stop: a slow spawn freezes at once
            self._stop(svc)
            driver = svc.manager.driver
            self._driver_state = (driver.instances, driver.resources)
            self._dead.append(svc)
            LOG.info("nova box: compute %s crashed (power lost)", self.name)

    @staticmethod
    def _stop(svc):
        """Stop a service at once, without any goodbye to the database."""
        try:
            svc.tg.stop_timers(wait=False)  # heartbeats and periodic tasks
        except Exception:
            LOG.exception("stopping timers")
        svc.service_ref = _DeadServiceRef()  # swallows an in-flight heartbeat
        servers = [s for s in (svc.rpcserver, svc.rpcserver_alt) if s]
        for server in servers:
            try:
                server.stop()
            except Exception:
                LOG.exception("stopping RPC server")

        def _reap():
            for server in servers:
                try:
                    server.wait()
                except Exception:
                    pass

        threading.Thread(target=_reap, daemon=True, name=f"reap-{svc.host}").start()


def _sqlite_immediate_writers():
    """Make oslo.db writer transactions on sqlite start with BEGIN IMMEDIATE.

    oslo.db opens every sqlite transaction with a plain (deferred) BEGIN, so
    a writer transaction first reads from a snapshot and only asks for the
    write lock at its first write. When another thread committed in
    between, sqlite answers SQLITE_BUSY at once, without waiting for the
    busy timeout ("database is locked"). Taking the write lock at BEGIN for
    writer transactions makes them queue up (30 s busy timeout) instead;
    reader transactions keep a plain BEGIN and never block.
    """
    import contextlib

    import sqlalchemy
    from oslo_db.sqlalchemy import enginefacade

    local = threading.local()
    ctx_cls = enginefacade._TransactionContext
    original = ctx_cls._produce_block

    @contextlib.contextmanager
    def _produce_block(self, mode, connection, savepoint, allow_async=False, context=None):
        # The transaction this block runs in writes if the block is a writer
        # or if it is nested in a writer block of the same context. Readers
        # with their own context (placement's caches, ".independent") get
        # a new connection and must not take the write lock: inside a writer
        # of the same thread that would wait for itself.
        writer = mode is enginefacade._WRITER or getattr(self, "mode", None) is enginefacade._WRITER
        stack = local.__dict__.setdefault("blocks", [])
        stack.append((self.factory.get_writer_engine(), writer))
        try:
            with original(
                self, mode, connection, savepoint, allow_async=allow_async, context=context
            ) as res:
                yield res
        finally:
            stack.pop()

    ctx_cls._produce_block = _produce_block

    def _begin(conn):
        if conn.dialect.name != "sqlite" or "in_transaction" in conn.info:
            return
        for engine, writer in reversed(getattr(local, "blocks", ())):
            if engine is conn.engine:
                if writer:
                    conn.execute(sqlalchemy.text("BEGIN IMMEDIATE"))
                    # oslo.db's own listener (run after this class-level
                    # one) sees the marker and emits no plain BEGIN.
                    conn.info["in_transaction"] = True
                return

    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "begin", _begin)

    # With pooled connections (below) a transaction marker must not outlive
    # the checkout it was set in.
    def _checkin(dbapi_connection, connection_record):
        connection_record.info.pop("in_transaction", None)

    sqlalchemy.event.listen(sqlalchemy.pool.Pool, "checkin", _checkin)

    # oslo.db gives sqlite file databases a NullPool: a new connection for
    # every transaction, each re-reading Nova's big schema. That alone cost
    # most of a CPU second per server built. Pool the connections instead.
    from oslo_db.sqlalchemy import engines
    from sqlalchemy import pool

    real_create_engine = sqlalchemy.create_engine

    def create_engine(url, *args, **kwargs):
        if str(url).startswith("sqlite:///") and kwargs.get("poolclass") is pool.NullPool:
            kwargs["poolclass"] = pool.QueuePool
            kwargs["pool_size"] = 10
            kwargs["max_overflow"] = 40
            kwargs.setdefault("connect_args", {})["check_same_thread"] = False
        return real_create_engine(url, *args, **kwargs)

    engines.sqlalchemy.create_engine = create_engine


class _FairLock:
    """A FIFO lock (Nova wants its compute resource lock to be fair)."""

    def __init__(self):
        self._cond = threading.Condition(threading.Lock())
        self._next_ticket = 0
        self._serving = 0

    def __enter__(self):
        with self._cond:
            ticket = self._next_ticket
            self._next_ticket += 1
            while self._serving != ticket:
                self._cond.wait()

    def __exit__(self, *exc):
        with self._cond:
            self._serving += 1
            self._cond.notify_all()


def _per_host_compute_resource_lock():
    """Give each host's resource tracker its own COMPUTE_RESOURCE_SEMAPHORE.

    In Nova that lock is process-wide, i.e. one per nova-compute. With all
    computes in one process it would serialize every claim, evacuation and
    periodic update of all hosts behind one lock.
    """
    import functools
    import inspect

    from nova.compute import resource_tracker

    guard = threading.Lock()

    def lock_of(tracker):
        with guard:
            lock = tracker.__dict__.get("_nova_box_lock")
            if lock is None:
                lock = tracker.__dict__["_nova_box_lock"] = _FairLock()
        return lock

    def rewrap(func):
        @functools.wraps(func)
        def locked(self, *args, **kwargs):
            with lock_of(self):
                return func(self, *args, **kwargs)

        return locked

    cls = resource_tracker.ResourceTracker
    for name, attr in list(vars(cls).items()):
        original = getattr(attr, "__wrapped__", None)
        if original is None or not inspect.isfunction(attr):
            continue
        names = inspect.getclosurevars(attr).nonlocals
        if (
            names.get("name") == "nova-" + resource_tracker.COMPUTE_RESOURCE_SEMAPHORE
            or names.get("name") == resource_tracker.COMPUTE_RESOURCE_SEMAPHORE
        ):
            setattr(cls, name, rewrap(original))


def _slow_fake_spawn(box):
    """Make FakeDriver.spawn take ``box.rebuild_delay`` seconds (0: no delay).

    A real hypervisor takes seconds to build a guest; the fake driver takes
    none. FakeDriver has no ``rebuild`` of its own: a rebuild or evacuation
    runs Nova's ``_rebuild_default_impl``, which calls ``driver.spawn`` with
    task_state ``rebuild_spawning``. So this one delay covers builds,
    rebuilds, evacuations and unshelves, on every host.

    The delay is waited in the thread that runs the spawn: a worker of the
    compute's own RPC server (oslo.messaging "threading" executor, 64
    workers per nova-compute) for a rebuild/evacuation, a worker of Nova's
    build pool for a build. The box runs native threads, not eventlet (see
    OS_NOVA_DISABLE_EVENTLET_PATCHING), so a plain wait only parks that
    thread: other spawns on the same host, other computes, heartbeats and
    the API go on. The delay is read once, when the spawn starts.

    A compute that crashes (power loss) while a spawn waits does not finish
    it: the spawn's thread stays parked for good, as if its process had
    died. Nothing is written for it: the server keeps its task_state, the
    guest never appears on the driver. (Nothing process-wide is held there:
    the rebuild path takes no per-instance lock.)
    """
    from nova.virt import fake

    original = fake.FakeDriver.spawn
    if getattr(original, "_nova_box_slow", False):
        return
    if "rebuild" in vars(fake.FakeDriver):  # would bypass spawn: patch it too
        raise RuntimeError("FakeDriver.rebuild exists: _slow_fake_spawn needs updating")

    def spawn(self, context, instance, *args, **kwargs):
        delay = box.rebuild_delay
        if delay > 0:
            power_lost = getattr(self, "_nova_box_power_lost", None) or threading.Event()
            LOG.info(
                "nova box: spawn of %s on %s delayed %.3fs (task_state %s, thread %s)",
                instance.uuid,
                self._host,
                delay,
                instance.task_state,
                threading.current_thread().name,
            )
            if power_lost.wait(delay):
                LOG.info("nova box: spawn of %s cut by a power loss", instance.uuid)
                while True:  # the process is "dead": never return
                    time.sleep(3600)
        return original(self, context, instance, *args, **kwargs)

    spawn._nova_box_slow = True
    fake.FakeDriver.spawn = spawn


def _load_sibling(name):
    """A module of this directory (which is off sys.path: see the top of this file)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"nova_box_{name}", f"{_HERE}/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Box:
    def __init__(self, args):
        self.args = args
        self.state_dir = os.path.abspath(args.state_dir)
        self.binds = args.bind or ["127.0.0.1"]
        self.port = None
        self.keystone = Keystone(self)
        self.front = ComputeFront(self)
        self.control = None
        self.placement_app = None
        self.placement_front = PlacementFront(self)
        self.glance_api = None
        self.http_servers = []
        self.computes = {}
        self.controller_services = []
        self.cell_mappings = {}
        self._flavor_lock = threading.Lock()
        self._internal_token = None
        self._nova_app = None
        self.stopping = threading.Event()
        self.rebuild_delay = 0.0  # seconds each FakeDriver spawn/rebuild takes

    # -- addresses -----------------------------------------------------------
    @property
    def public_base(self):
        host = self.binds[0]
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def compute_url(self):
        return self.public_base + "/compute/v2.1"

    @property
    def auth_url(self):
        return self.public_base + "/identity/v3"

    # -- boot ----------------------------------------------------------------
    def listen(self):
        port = self.args.port
        for addr in self.binds:
            server_cls = _Server
            if ":" in addr:
                server_cls = type("_Server6", (_Server,), {"address_family": socket.AF_INET6})
            srv = server_cls((addr, port), _Handler)
            srv.box = self
            srv.set_app(Dispatcher(self))
            port = srv.server_address[1]
            self.http_servers.append(srv)
        self.port = port
        for srv in self.http_servers:
            threading.Thread(
                target=srv.serve_forever,
                kwargs={"poll_interval": 0.5},
                daemon=True,
                name=f"http-{srv.server_address[0]}",
            ).start()

    def _write_conf(self):
        d = self.state_dir
        paste = os.path.join(sys.prefix, "etc", "nova", "api-paste.ini")
        if not os.path.exists(paste):
            raise SystemExit(f"api-paste.ini not found at {paste}")
        for sub in ("instances", "locks", "state", "tmp"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        self.db_urls = {}
        for name in ("api", "cell0", "cell1", "placement"):
            path = os.path.join(d, f"{name}.sqlite")
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(path + suffix):
                    os.unlink(path + suffix)
            with sqlite3.connect(path) as conn:
                conn.execute("PRAGMA journal_mode=WAL")
            self.db_urls[name] = f"sqlite:///{path}?timeout=30"
        conf = """\
[DEFAULT]
host = controller
compute_driver = fake.FakeDriver
transport_url = fake:/
state_path = {d}/state
instances_path = {d}/instances
tempdir = {d}/tmp
log_file = {log}
debug = {debug}
use_stderr = false
report_interval = {ri}
service_down_time = {sdt}
graceful_shutdown_timeout = 5
manager_shutdown_timeout = 2
heal_instance_info_cache_interval = -1
instance_usage_audit = false
[wsgi]
api_paste_config = {paste}
[api_database]
connection = {api}
[database]
connection = {cell1}
sqlite_synchronous = false
[placement]
auth_type = admin_token
endpoint = {base}/placement
token = admin
region_name = {region}
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
[scheduler]
discover_hosts_in_cells_interval = -1
[filter_scheduler]
build_failure_weight_multiplier = 0.0
""".format(
            d=d,
            log=self.log_path,
            debug=str(bool(self.args.debug)).lower(),
            ri=self.args.report_interval,
            sdt=self.args.service_down_time,
            paste=paste,
            api=self.db_urls["api"],
            cell1=self.db_urls["cell1"],
            base=self.public_base,
            region=REGION,
        )
        self.conf_path = os.path.join(d, "nova.conf")
        with open(self.conf_path, "w") as f:
            f.write(conf)

    @property
    def log_path(self):
        return os.path.join(self.state_dir, "nova-box.log")

    def boot(self):
        global LOG
        t0 = time.time()
        os.makedirs(self.state_dir, exist_ok=True)
        self.listen()
        self._write_conf()

        from nova import monkey_patch

        monkey_patch.patch(backend="threading")

        import futurist._thread

        # Nova's test base lowers this to 10 ms (half a core when idle);
        # we do not use that base, but make sure of futurist's default.
        futurist._thread.ThreadWorker.MAX_IDLE_FOR = 1

        import nova.conf
        from nova import config as nova_config
        from nova import objects
        from oslo_log import log as logging

        objects.register_all()
        CONF = nova.conf.CONF
        self.CONF = CONF
        nova_config.parse_args(["nova-box", "--config-file", self.conf_path])
        logging.setup(CONF, "nova")
        LOG = logging.getLogger("nova_box")
        # stevedore logs an ERROR for each oslo.cache backend it cannot
        # import (memcache, ...) when Nova lists them; none is used here.
        import logging as std_logging

        std_logging.getLogger("stevedore.extension").addFilter(
            lambda record: "oslo_cache" not in record.getMessage()
        )
        LOG.info("nova box: booting, state dir %s, port %d", self.state_dir, self.port)

        self._patch_nova()
        self._make_databases()
        self._start_placement()
        self._start_fakes()
        self._make_flavors()

        from nova import service as nova_service

        for binary, topic in (("nova-conductor", "conductor"), ("nova-scheduler", "scheduler")):
            svc = nova_service.Service.create(binary=binary, host="controller", topic=topic)
            svc.start()
            self.controller_services.append(svc)

        for name in self.args.hosts:
            self.computes[name] = ComputeHost(self, name)
        for host in self.computes.values():
            host.start()

        self._start_api()
        self.control = Control(self)
        self.boot_seconds = time.time() - t0
        LOG.info("nova box: ready in %.2fs", self.boot_seconds)

    def _patch_nova(self):
        _sqlite_immediate_writers()
        _per_host_compute_resource_lock()
        _slow_fake_spawn(self)
        if self.args.libvirt_hosts:
            _load_sibling("libvirt_driver").install(self.args.libvirt_hosts)
        import keystonemiddleware.auth_token as auth_token
        import nova.virt.node
        from nova.compute import manager as compute_manager

        keystone = self.keystone

        def filter_factory(global_conf, **local_conf):
            return lambda app: TokenShim(app, keystone)

        # The paste pipeline's "authtoken" filter becomes our token shim.
        auth_token.filter_factory = filter_factory
        # All computes share one process (and one state_path): the persistent
        # local node identity file would be one for all of them. FakeDriver
        # reports a per-host node UUID itself, so skip that file.
        compute_manager.ComputeManager._ensure_existing_node_identity = lambda self, service_ref: (
            None
        )
        nova.virt.node.write_local_node_uuid = lambda node_uuid: None
        # First heartbeat after report_interval instead of Nova's fixed 5 s,
        # so that a (re)started compute is reported up promptly.
        from nova.servicegroup import api as servicegroup_api

        servicegroup_api.INITIAL_REPORTING_DELAY = min(
            servicegroup_api.INITIAL_REPORTING_DELAY, self.args.report_interval
        )

    def _make_databases(self):
        from nova import context, objects
        from nova.db import migration

        migration.db_sync(database="api")
        migration.db_sync(database="main")
        ctxt = context.get_admin_context()
        cell0 = objects.CellMapping(
            context=ctxt,
            uuid=objects.CellMapping.CELL0_UUID,
            name="cell0",
            transport_url="none:///",
            database_connection=self.db_urls["cell0"],
        )
        cell0.create()
        cell1 = objects.CellMapping(
            context=ctxt,
            uuid=str(uuid.uuid4()),
            name="cell1",
            transport_url="fake:/",
            database_connection=self.db_urls["cell1"],
        )
        cell1.create()
        with context.target_cell(ctxt, cell0) as cctxt:
            migration.db_sync(database="main", context=cctxt)
        self.cell_mappings = {"cell0": cell0, "cell1": cell1}

    def _start_placement(self):
        from oslo_config import cfg
        from oslo_policy import opts as policy_opts
        from placement import conf as placement_conf
        from placement import db_api as placement_db
        from placement import deploy as placement_deploy
        from placement.db.sqlalchemy import migration as placement_migration

        pconf = cfg.ConfigOpts()
        placement_conf.register_opts(pconf)
        pconf.set_override("connection", self.db_urls["placement"], group="placement_database")
        pconf.set_override("auth_strategy", "noauth2", group="api")
        policy_opts.set_defaults(pconf, enforce_new_defaults=False)
        pconf([], default_config_files=[])
        placement_db.configure(pconf)
        placement_migration.create_schema(placement_db.get_placement_engine())
        self.placement_app = placement_deploy.loadapp(pconf)

    def _start_fakes(self):
        from nova.tests import fixtures as nova_fixtures

        self.harness = _Harness(self.CONF)
        self.glance = self.harness.useFixture(nova_fixtures.GlanceFixture(self.harness))
        image = dict(nova_fixtures.GlanceFixture.image1)
        image.update(
            {
                "id": IMAGE_EVACUABLE,
                "name": "cirros-evacuable",
                "properties": dict(image["properties"], evacuable="true"),
            }
        )
        self.glance.create(None, image)
        self.harness.useFixture(nova_fixtures.NeutronFixture(self.harness))
        self.harness.useFixture(nova_fixtures.CinderFixture(self.harness))
        self.glance_api = GlanceV2(self)

    def _make_flavors(self):
        from nova import context, objects

        ctxt = context.get_admin_context()
        for flavorid, name, vcpus, ram, disk, specs in FLAVORS:
            objects.Flavor(
                context=ctxt,
                flavorid=flavorid,
                name=name,
                vcpus=vcpus,
                memory_mb=ram,
                root_gb=disk,
                ephemeral_gb=0,
                swap=0,
                rxtx_factor=1.0,
                disabled=False,
                is_public=True,
                extra_specs=dict(specs),
            ).create()

    def flavor_with_specs(self, specs):
        from nova import context, exception, objects

        specs = {str(k): str(v) for k, v in specs.items()}
        digest = hashlib.sha1(json.dumps(specs, sort_keys=True).encode())
        flavorid = "tb-" + digest.hexdigest()[:10]
        ctxt = context.get_admin_context()
        with self._flavor_lock:
            try:
                objects.Flavor.get_by_flavor_id(ctxt, flavorid)
            except exception.FlavorNotFound:
                objects.Flavor(
                    context=ctxt,
                    flavorid=flavorid,
                    name=flavorid,
                    vcpus=1,
                    memory_mb=512,
                    root_gb=1,
                    ephemeral_gb=0,
                    swap=0,
                    rxtx_factor=1.0,
                    disabled=False,
                    is_public=True,
                    extra_specs=specs,
                ).create()
        return flavorid

    def map_hosts(self):
        from nova import context
        from nova.objects import host_mapping

        host_mapping.discover_hosts(
            context.get_admin_context(), cell_uuid=self.cell_mappings["cell1"].uuid
        )

    def _start_api(self):
        from nova.api import wsgi as nova_wsgi
        from nova.api.openstack import wsgi_app

        wsgi_app._setup_service(self.CONF.host, "osapi_compute")
        self._nova_app = nova_wsgi.Loader().load_app("osapi_compute")
        self._internal_token, _ = self.keystone.issue(["password"], internal=True)
        self.front.app = self._nova_app

    # -- helpers for the control API ----------------------------------------
    def nova_call(self, method, path, body=None, microversion="latest"):
        """Call the Nova API in-process (not logged, ignores 'API down')."""
        import webob

        path = "/v2.1" + path
        req = webob.Request.blank(path, method=method)
        req.script_name = "/compute"
        req.environ["SERVER_NAME"] = self.binds[0]
        req.environ["SERVER_PORT"] = str(self.port)
        req.environ["HTTP_HOST"] = f"{self.binds[0]}:{self.port}"
        req.headers["X-Auth-Token"] = self._internal_token
        req.headers["OpenStack-API-Version"] = f"compute {microversion}"
        req.headers["Accept"] = "application/json"
        if body is not None:
            req.body = json.dumps(body).encode()
            req.content_type = "application/json"
        resp = req.get_response(self._nova_app)
        try:
            data = json.loads(resp.body) if resp.body else None
        except ValueError:
            data = resp.text
        return resp.status_int, data

    def create_servers(
        self,
        host,
        count=1,
        name_prefix="vm",
        flavor_extra_specs=None,
        flavor=None,
        image=None,
        metadata=None,
        wait=True,
        timeout=300,
    ):
        if host not in self.computes:
            raise BoxError(f"unknown host {host}", 404)
        count = int(count)
        if count < 1:
            raise BoxError("count must be >= 1")
        if flavor_extra_specs:
            flavor = self.flavor_with_specs(flavor_extra_specs)
        flavor = str(flavor or FLAVOR_DEFAULT)
        image = {None: IMAGE_DEFAULT, "default": IMAGE_DEFAULT, "evacuable": IMAGE_EVACUABLE}.get(
            image, image
        )
        server = {
            "name": name_prefix,
            "imageRef": image,
            "flavorRef": flavor,
            "networks": "none",
            "availability_zone": f"nova:{host}",
            "min_count": count,
            "max_count": count,
            "return_reservation_id": True,
        }
        if metadata:
            server["metadata"] = {str(k): str(v) for k, v in metadata.items()}
        status, data = self.nova_call("POST", "/servers", {"server": server})
        if status != 202:
            raise BoxError(f"server create failed: {status} {data}", 500)
        rid = data["reservation_id"]
        ids = self._wait_reservation(rid, count, wait, float(timeout))
        return ids

    def _wait_reservation(self, rid, count, wait, timeout):
        """Wait (cheaply: DB reads, not API listings) for a multi-create."""
        from nova import context, objects

        ctxt = context.get_admin_context()
        deadline = time.time() + timeout
        while True:
            with context.target_cell(ctxt, self.cell_mappings["cell1"]) as cctxt:
                insts = objects.InstanceList.get_by_filters(
                    cctxt, {"reservation_id": rid}, expected_attrs=[]
                )
            errors = [i.uuid for i in insts if i.vm_state == "error"]
            if errors:
                raise BoxError(f"servers went to ERROR: {errors}", 500)
            if len(insts) == count and (
                not wait or all(i.vm_state == "active" and i.task_state is None for i in insts)
            ):
                break
            if time.time() > deadline:
                raise BoxError(
                    f"timeout waiting for {count} servers ({sorted(i.vm_state for i in insts)})",
                    500,
                )
            time.sleep(min(2.0, max(0.25, 0.02 * count)))  # polling costs CPU
        insts = sorted(insts, key=lambda i: (i.launch_index or 0, i.display_name))
        return [i.uuid for i in insts]

    def hosts_state(self):
        state = {}
        for name, host in self.computes.items():
            svc = host.service
            state[name] = {
                "running": svc is not None,
                "instances_on_driver": (
                    len(svc.manager.driver.instances) if svc is not None else None
                ),
            }
        return state

    def info(self):
        return {
            "port": self.port,
            "auth_url": self.auth_url,
            "compute_url": self.compute_url,
            "pid": os.getpid(),
            "boot_seconds": round(self.boot_seconds, 2),
            "report_interval": self.args.report_interval,
            "service_down_time": self.args.service_down_time,
            "rebuild_delay": self.rebuild_delay,
            "images": {"default": IMAGE_DEFAULT, "evacuable": IMAGE_EVACUABLE},
            "flavors": {f[0]: {"name": f[1], "extra_specs": f[5]} for f in FLAVORS},
            "project_id": ADMIN_PROJECT_ID,
            "user_id": ADMIN_USER_ID,
            "log_path": self.log_path,
        }

    # -- shutdown --------------------------------------------------------------
    def shutdown(self):
        if LOG:
            LOG.info("nova box: shutting down")
        for srv in self.http_servers:
            threading.Thread(target=srv.shutdown, daemon=True).start()
        for host in self.computes.values():
            try:
                host.crash()
            except Exception:
                pass
        for svc in self.controller_services:
            try:
                ComputeHost._stop(svc)
            except Exception:
                pass
        for srv in self.http_servers:
            try:
                srv.server_close()
            except Exception:
                pass
        if LOG:
            LOG.info("nova box: stopped")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--hosts", default="host1,host2,host3", help="comma-separated compute host names"
    )
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--bind",
        action="append",
        help="address to listen on (repeatable); the first one is used in the catalog",
    )
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--report-interval", type=int, default=1)
    parser.add_argument("--service-down-time", type=int, default=6)
    parser.add_argument("--debug", action="store_true")
    parser.add_argument(
        "--libvirt-host",
        action="append",
        default=[],
        metavar="HOST=URI",
        help="HOST's compute runs one libvirt domain per server at URI (libvirt_driver.py)",
    )
    parser.add_argument(
        "--exit-on-stdin-eof", action="store_true", help="stop when stdin closes (the parent died)"
    )
    args = parser.parse_args(argv)
    args.hosts = [h for h in args.hosts.split(",") if h]
    args.libvirt_hosts = dict(spec.split("=", 1) for spec in args.libvirt_host if "=" in spec)
    if len(args.libvirt_hosts) != len(args.libvirt_host):
        parser.error("--libvirt-host takes HOST=URI")

    stop = threading.Event()

    def _on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    if args.exit_on_stdin_eof:

        def _watch_stdin():
            try:
                while sys.stdin.buffer.read(4096):
                    pass
            except Exception:
                pass
            stop.set()

        threading.Thread(target=_watch_stdin, daemon=True, name="stdin-watch").start()

    box = Box(args)
    try:
        box.boot()
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.write(
        json.dumps(
            {
                "port": box.port,
                "auth_url": box.auth_url,
                "compute_url": box.compute_url,
                "pid": os.getpid(),
                "addresses": box.binds,
                "log_path": box.log_path,
                "boot_seconds": round(box.boot_seconds, 2),
            }
        )
        + "\n"
    )
    sys.stdout.flush()
    while not stop.wait(1.0):
        pass
    # Stop everything, then leave without waiting for native threads that
    # cannot be interrupted (in-flight RPC handlers, pool workers).
    watchdog = threading.Timer(10.0, lambda: os._exit(0))
    watchdog.daemon = True
    watchdog.start()
    try:
        box.shutdown()
    finally:
        import logging as std_logging

        std_logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
