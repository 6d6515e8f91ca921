"""Issue 11, the Nova client's classes: malformed replies (2), a cached token that no longer
works (3), bounded replies and paging (7), adminPass out of the logs (10), the token cache's
files and directories (11), where clouds.yaml is read (14)."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from nova_ha.lib import log, params, proof
from nova_ha.openstack import auth, compute, token_cache, transport
from nova_ha.openstack.compute import Nova
from nova_ha.openstack.exceptions import NovaError, Unavailable
from nova_ha.openstack.transport import Deadline, Transport
from nova_ha.openstack.views import Server
from tests.helpers import FENCE_AGENT, PYTHON, cloud_client, run_fence, stdin_text

VERSION_DOC = {
    "version": {
        "id": "v2.1",
        "status": "CURRENT",
        "version": "2.104",
        "min_version": "2.1",
        "links": [],
    }
}


# ---- a hostile Nova: any status, body, length, pace -----------------------------------------


class Reply:
    """What the hostile Nova answers: `body` (bytes, or JSON-encoded), sent whole, cut after
    `cut` bytes (the connection closed short of Content-Length), or `pace` seconds a byte."""

    def __init__(
        self,
        body: object = b"",
        status: int = 200,
        *,
        cut: int | None = None,
        pace: float = 0.0,
        length: int | None = None,
        content_type: str = "application/json",
    ) -> None:
        self.body = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.status, self.cut, self.pace, self.length = status, cut, pace, length
        self.content_type = content_type


class HostileNova:
    """A compute endpoint on 127.0.0.1 answering from a table of (method, path regex) ->
    Reply or a function of the request count; GET / answers Nova's version document."""

    def __init__(self) -> None:
        self.routes: list[tuple[str, re.Pattern, Reply | Callable[[int], Reply]]] = []
        self.log: list[tuple[str, str]] = []
        hostile = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                path = self.path.split("/compute/v2.1", 1)[-1] or "/"
                hostile.log.append((self.command, path))
                reply = hostile.reply(self.command, path)
                body = reply.body
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                self.send_header(
                    "Content-Length", str(reply.length if reply.length is not None else len(body))
                )
                if reply.cut is not None or reply.pace:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                try:
                    if reply.pace:
                        for byte in body:
                            self.wfile.write(bytes([byte]))
                            self.wfile.flush()
                            time.sleep(reply.pace)
                    else:
                        self.wfile.write(body if reply.cut is None else body[: reply.cut])
                    self.wfile.flush()
                except OSError:
                    self.close_connection = True

            do_GET = do_POST = do_PUT = _answer  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/compute/v2.1"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def reply(self, method: str, path: str) -> Reply:
        for want, regex, reply in self.routes:
            if want == method and regex.search(path):
                return reply(len(self.log)) if callable(reply) else reply
        if method == "GET" and path.split("?")[0] in ("", "/"):
            return Reply(VERSION_DOC)
        return Reply({"itemNotFound": {"code": 404, "message": "not here"}}, 404)

    def on(self, method: str, path: str, reply: Reply | Callable[[int], Reply]) -> None:
        self.routes.insert(0, (method, re.compile(path), reply))

    def client(self, timeout: float = 5.0) -> Nova:
        from keystoneauth1 import session, token_endpoint

        auth = token_endpoint.Token(self.url, "a-token")
        return Nova(
            Transport(
                session.Session(auth=auth),
                interface="public",
                timeout=timeout,
                endpoint_override=self.url,
            )
        )

    def __enter__(self) -> HostileNova:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hostile() -> Iterator[HostileNova]:
    with HostileNova() as server:
        yield server


def _assert_short_and_printable(err: BaseException) -> None:
    text = str(err)
    assert text.isprintable(), text
    assert len(text) < 400, text
    assert "Traceback" not in text


# ---- class 2: every reply parsed defensively ---------------------------------------------------

HTML = (
    b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\x1b[31m\r\n"
    b"<body>\xe2\x80\xa8forged line\x00" + b"x" * 5000 + b"</body></html>"
)
GOOD_SERVICE = {
    "id": "e5b7",
    "host": "host1",
    "binary": "nova-compute",
    "status": "enabled",
    "state": "up",
    "forced_down": False,
    "disabled_reason": None,
}
GOOD_SERVER = {
    "id": "s-1",
    "name": "vm",
    "status": "ACTIVE",
    "OS-EXT-SRV-ATTR:host": "host1",
    "flavor": {"extra_specs": {}},
    "metadata": {},
    "image": "",
}

# (what is called, the path it reads, a malformed reply)
MALFORMED = [
    ("services", r"/os-services", Reply(HTML, content_type="text/html")),
    ("services", r"/os-services", Reply(b'{"services": [{"id": "a", "ho', cut=20)),
    ("services", r"/os-services", Reply(b'{"services": [{"id": "a", "host"')),
    ("services", r"/os-services", Reply([GOOD_SERVICE])),
    ("services", r"/os-services", Reply({"services": {"0": GOOD_SERVICE}})),
    ("services", r"/os-services", Reply({"services": ["host1"]})),
    ("services", r"/os-services", Reply({"services": [{"id": 1}]})),
    ("services", r"/os-services", Reply({"services": [dict(GOOD_SERVICE, host=["h"])]})),
    ("services", r"/os-services", Reply({"services": [dict(GOOD_SERVICE, forced_down="no")]})),
    ("services", r"/os-services", Reply({"compute": []})),
    ("services", r"/os-services", Reply(b"[" * 100000 + b"]" * 100000)),
    ("services", r"/os-services", Reply(b'{"services": [], "n": 1' + b"0" * 5000 + b"}")),
    ("microversion", r"^/$", Reply({"version": "2.104"})),
    ("microversion", r"^/$", Reply({"version": {"version": "two"}})),
    ("microversion", r"^/$", Reply(b"<html>maintenance</html>")),
    ("server", r"/servers/s-1$", Reply({"server": ["s-1"]})),
    ("server", r"/servers/s-1$", Reply({"server": {"id": 5}})),
    ("server", r"/servers/s-1$", Reply({"server": dict(GOOD_SERVER, flavor="m1.small")})),
    ("server", r"/servers/s-1$", Reply({"server": dict(GOOD_SERVER, fault="gone")})),
    ("servers_on", r"/servers/detail", Reply({"servers": "none"})),
    ("servers_on", r"/servers/detail", Reply({"servers": [{"name": "no id"}]})),
    ("servers_on", r"/servers/detail", Reply({"servers": [GOOD_SERVER], "servers_links": "x"})),
    ("servers_on", r"/servers/detail", Reply({"servers": [GOOD_SERVER], "servers_links": [1]})),
    ("servers_on", r"/servers/detail", Reply({"servers": [dict(GOOD_SERVER, metadata=[])]})),
    ("migrations", r"/os-migrations", Reply({"migrations": [{"instance_uuid": 5}]})),
    (
        "migrations",
        r"/os-migrations",
        Reply({"migrations": [{"instance_uuid": "s", "created_at": 17}]}),
    ),
    ("migrations", r"/os-migrations", Reply({"migrations": None})),
    ("actions", r"/os-instance-actions", Reply({"instanceActions": {"action": "stop"}})),
    ("actions", r"/os-instance-actions", Reply({"instanceActions": ["stop"]})),
    ("image", r"/images/i-1", Reply({"image": {"metadata": ["a"]}})),
    ("image", r"/images/i-1", Reply({"image": "cirros"})),
]


def _call(client: Nova, name: str, deadline: Deadline) -> object:
    return {
        "services": lambda: client.services(deadline),
        "microversion": lambda: client.microversion(deadline),
        "server": lambda: client.server(deadline, "s-1"),
        "servers_on": lambda: client.servers_on(deadline, "host1"),
        "migrations": lambda: client.evacuation_migrations(deadline, source_host="host1"),
        "actions": lambda: client.instance_actions(deadline, "s-1"),
        "image": lambda: client.image_properties(deadline, "i-1"),
    }[name]()


@pytest.mark.parametrize(
    ("call", "path", "reply"), MALFORMED, ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(MALFORMED)]
)
def test_malformed_reply_is_a_short_nova_error(hostile, call, path, reply):
    hostile.on("GET", path, reply)
    with pytest.raises(NovaError) as raised:
        _call(hostile.client(timeout=2), call, Deadline(1.5))
    _assert_short_and_printable(raised.value)


def test_error_pages_are_quoted_short_and_escaped(hostile):
    hostile.on("GET", r"/os-services", Reply(HTML, 400, content_type="text/html"))
    with pytest.raises(NovaError) as raised:
        hostile.client().services(Deadline(5))
    assert raised.value.status == 400
    _assert_short_and_printable(raised.value)
    assert "502 Bad Gateway" in str(raised.value)
    assert "\\x1b" in str(raised.value) and "\n" not in str(raised.value)


def test_a_cut_body_is_retried_then_a_nova_error(hostile):
    hostile.on(
        "GET",
        r"/os-services",
        lambda n: (
            Reply({"services": [GOOD_SERVICE]}, cut=None)
            if n > 2
            else Reply({"services": [GOOD_SERVICE]}, cut=12)
        ),
    )
    assert [s.host for s in hostile.client().services(Deadline(10))] == ["host1"]
    hostile.on("GET", r"/os-services", Reply({"services": [GOOD_SERVICE]}, cut=12))
    with pytest.raises(Unavailable) as raised:
        hostile.client().services(Deadline(1.5))
    _assert_short_and_printable(raised.value)
    assert "cut short" in str(raised.value)


def test_an_accepted_evacuation_with_a_malformed_body_is_accepted(hostile):
    hostile.on("POST", r"/servers/s-1/action", Reply(HTML, 202, content_type="text/html"))
    server, confirmed = Server("s-1", host="host1"), proof.by_bmc("host1", "host1")
    assert hostile.client().evacuate(Deadline(5), server, confirmed) is True
    hostile.on("POST", r"/servers/s-1/action", Reply(b'{"adminPass": "x', 200, cut=5))
    assert hostile.client().evacuate(Deadline(5), server, confirmed) is True


def test_malformed_keystone_replies_are_nova_errors(monkeypatch):
    """keystoneauth1 parses the token reply: a list, no X-Subject-Token, or a token of the
    wrong shape must not escape as a TypeError/KeyError; a huge one is not read whole."""
    monkeypatch.setattr(transport, "MAX_BODY", 64 << 10)

    class Keystone(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        replies: list[tuple[bytes, bool]] = []

        def log_message(self, *args):
            pass

        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body, with_header = self.replies[0]
            self.send_response(201)
            self.send_header("Content-Type", "application/json")
            if with_header:
                self.send_header("X-Subject-Token", "t")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Keystone)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for reply in [
            (b"[1, 2]", True),
            (b"7", True),
            (b'{"token": {}}', False),
            (b'{"token": "x"}', True),
            (b'{"token": {"catalog": 3}}', True),
            (b"<html>", True),
            (b'{"token": {"x": "' + b"a" * (100 << 10) + b'"}}', True),
        ]:
            Keystone.replies[:] = [reply]
            parsed = params.parse(
                {
                    "os_auth_url": f"http://127.0.0.1:{server.server_port}/v3",
                    "os_username": "u",
                    "os_password": "p",
                    "os_project_name": "p",
                    "os_token_cache": "0",
                },
                params.FENCE,
            )
            client = Nova.from_params(parsed)
            with pytest.raises(NovaError) as raised:
                client.services(Deadline(1.5))
            _assert_short_and_printable(raised.value)
            if len(reply[0]) > transport.MAX_BODY:
                assert "larger than" in str(raised.value)
            try:  # a token of the wrong shape may still give a token: then the call fails
                Nova.from_params(parsed).authenticate()
            except NovaError as err:
                _assert_short_and_printable(err)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def sim_cloud() -> Iterator[object]:
    from testbed.nova_sim import NovaSim

    with NovaSim(hosts=["host1", "host2"]) as cloud:
        yield cloud


# ---- class 7: bounded replies and paging --------------------------------------------------------


def test_reply_size_is_capped(hostile, monkeypatch):
    assert transport.MAX_BODY == 16 << 20
    monkeypatch.setattr(transport, "MAX_BODY", 64 << 10)
    big = {"services": [GOOD_SERVICE], "pad": "x" * (100 << 10)}
    hostile.on("GET", r"/os-services", Reply(big))  # announced by Content-Length
    with pytest.raises(NovaError) as raised:
        hostile.client().services(Deadline(5))
    assert "larger than" in str(raised.value)
    _assert_short_and_printable(raised.value)
    # Not announced (a Content-Length that lies low is cut; one too large is refused)
    hostile.on("GET", r"/os-services", Reply(big, length=(200 << 10)))
    with pytest.raises(NovaError) as raised:
        hostile.client().services(Deadline(5))
    assert "larger than" in str(raised.value)


def test_a_trickling_reply_is_bounded_in_time(hostile):
    # 60 bytes, one each 0.2 s: every read gets a byte within the socket timeout.
    hostile.on("GET", r"/os-services", Reply(b'{"services": []}' + b" " * 44, pace=0.2))
    started = time.monotonic()
    with pytest.raises(NovaError):
        hostile.client(timeout=1.0).services(Deadline(2))
    assert time.monotonic() - started < 6


def test_paging_that_loops_stops_at_the_repeat(hostile):
    page = {
        "servers": [GOOD_SERVER, dict(GOOD_SERVER, id="s-2")],
        "servers_links": [{"rel": "next", "href": "http://nova/servers/detail?marker=s-2"}],
    }
    # (after 20 requests, errors: a client without the check fails instead of looping)
    hostile.on("GET", r"/servers/detail", lambda n: Reply(page) if n <= 20 else Reply({}, 503))
    with pytest.raises(NovaError) as raised:
        hostile.client().servers_on(Deadline(30), "host1")
    assert "loops" in str(raised.value)
    assert len([p for _, p in hostile.log if p.startswith("/servers/detail")]) == 2


def test_paging_has_a_page_cap_and_the_deadline(hostile, monkeypatch):
    def endless(n: int) -> Reply:
        if n > 30:  # a client without the bounds fails here instead of listing forever
            return Reply({}, 503)
        return Reply(
            {
                "servers": [dict(GOOD_SERVER, id=f"s-{n}")],
                "servers_links": [{"rel": "next", "href": "x"}],
            }
        )

    hostile.on("GET", r"/servers/detail", endless)
    monkeypatch.setattr(compute, "MAX_PAGES", 5)
    with pytest.raises(NovaError) as raised:
        hostile.client().servers_on(Deadline(30), "host1")
    assert "after 5 pages" in str(raised.value)
    assert len(hostile.log) == 5
    monkeypatch.setattr(compute, "MAX_PAGES", 1000)
    hostile.log.clear()
    hostile.on("GET", r"/servers/detail", lambda n: (time.sleep(0.2), endless(n))[1])
    started = time.monotonic()
    with pytest.raises(Unavailable) as raised:
        hostile.client().servers_changed_since(Deadline(1), "2026-01-01T00:00:00Z")
    assert "out of time" in str(raised.value)
    assert time.monotonic() - started < 3


def test_a_marker_is_quoted_into_the_next_query(hostile):
    first = {
        "servers": [dict(GOOD_SERVER, id="a&host=other")],
        "servers_links": [{"rel": "next", "href": "x"}],
    }
    hostile.on(
        "GET", r"/servers/detail", lambda n: Reply(first) if n == 1 else Reply({"servers": []})
    )
    hostile.client().servers_on(Deadline(5), "host1")
    assert "marker=a%26host%3Dother" in hostile.log[-1][1]


# ---- class 10: adminPass is never logged -----------------------------------------------------


@pytest.fixture
def verbose_log() -> Iterator[io.StringIO]:
    """The agents' verbose logging (log.setup(verbose=True)), into a buffer."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(log.REDACTOR)
    root = logging.getLogger()
    saved = root.level, {n: logging.getLogger(n).level for n in ("keystoneauth", "urllib3")}
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    for name in saved[1]:
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        for name, level in saved[1].items():
            logging.getLogger(name).setLevel(level)


def test_admin_pass_of_an_evacuation_is_not_logged(verbose_log):
    from testbed.nova_sim import NovaSim

    with NovaSim(hosts=["host1", "host2"], max_version="2.13") as cloud:
        server_id = cloud.create_servers("host1", 1)[0]
        cloud.crash("host1")
        cloud.force_down("host1")
        client = cloud_client(cloud)
        server = client.server(Deadline(30), server_id)
        assert client.evacuate(Deadline(30), server, proof.by_bmc("host1", "host1")) is True
    text = verbose_log.getvalue()
    assert "adminPass" in text  # the body was logged...
    for shown in re.findall(r"adminPass[\"']?\s*[:=]\s*[\"']?(\S{0,12})", text):
        assert shown.startswith("******"), text  # ...but never its value


def test_password_like_keys_are_redacted_in_logged_bodies():
    for body in (
        '{"adminPass": "s3cr3t-value", "id": 1}',
        '{"admin_password":"s3cr3t-value"}',
        '{"server": {"password": "s3cr3t-value"}}',
        "secret=s3cr3t-value&x=1",
        '{"auth": {"token": "s3cr3t-value"}}',
        '{"adminPass": "s3cr3t-val',
    ):
        shown = transport.excerpt(body)
        assert "s3cr3t" not in shown, shown
        assert "******" in shown
    assert (
        transport.excerpt('{"name": "vm-1", "status": "ACTIVE"}')
        == '{"name": "vm-1", "status": "ACTIVE"}'
    )


# ---- class 3: a cached token never blocks fencing -------------------------------------------


def _token_posts(bed) -> int:
    return len(
        [
            r
            for r in bed.cloud.request_log()
            if r["method"] == "POST" and r["path"].endswith("/auth/tokens")
        ]
    )


def _entry(bed) -> str:
    """The cache file the fence agent uses for the bed's credentials."""
    parsed = params.parse(
        {k: str(v) for k, v in bed.fence_params(action="monitor").items()}, params.FENCE
    )
    session = auth.make_session(auth.auth_settings(parsed.settings.openstack))
    return token_cache.TokenCache(session.auth).path


def _plant(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def _dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_cached_catalog_of_a_moved_endpoint_is_replaced(sim_bed):
    bed = sim_bed
    monitor = bed.fence_params(action="monitor")
    assert run_fence(monitor, env=bed.env()).returncode == 0
    path = _entry(bed)
    good = open(path).read()
    live = f"127.0.0.1:{bed.cloud.port}/compute/v2.1"
    assert live in good
    dead = good.replace(live, f"127.0.0.1:{_dead_port()}/compute/v2.1")
    moved = good.replace(live, f"127.0.0.1:{bed.cloud.port}/moved/v2.1")  # answers 404
    runs = [
        (dead, monitor),
        (dead, dict(monitor, action="list")),
        (dead, bed.fence_params("host1", evacuate="none")),
        (moved, monitor),
        (moved, bed.fence_params("host2", evacuate="none")),
    ]
    for planted, values in runs:
        _plant(path, planted)
        before = _token_posts(bed)
        started = time.monotonic()
        done = run_fence(values, env=bed.env(), timeout=60)
        assert done.returncode == 0, (values["action"], done.stderr)
        assert time.monotonic() - started < 15
        assert _token_posts(bed) == before + 1  # asked Keystone once, again
        assert live in open(path).read()  # and kept the new catalog
    assert bed.cloud.hosts()["host2"]["forced_down"]
    before = _token_posts(bed)
    assert run_fence(monitor, env=bed.env()).returncode == 0
    assert _token_posts(bed) == before  # the replaced entry serves the next run


def test_damaged_cache_entries_are_dropped(sim_bed):
    bed = sim_bed
    monitor = bed.fence_params(action="monitor")
    assert run_fence(monitor, env=bed.env()).returncode == 0
    path = _entry(bed)
    good = json.loads(open(path).read())
    token = good["body"]["token"]

    def variant(**changes) -> str:
        return json.dumps(dict(good, body={"token": dict(token, **changes)}))

    damaged = [
        "{not json",
        "[]",
        "null",
        '"text"',
        json.dumps({"auth_token": good["auth_token"]}),
        json.dumps(dict(good, body={"token": {}})),
        json.dumps(dict(good, body=[1])),
        variant(catalog="garbage"),
        variant(catalog=[{"type": "compute", "endpoints": "x"}]),
        variant(catalog=[s for s in token["catalog"] if s["type"] != "compute"]),
        variant(expires_at="soon"),
        variant(project=["p"]),
        "\udcff" * 10,
    ]
    actions = {0: dict(monitor, action="list"), 7: bed.fence_params("host3", evacuate="none")}
    for number, text in enumerate(damaged):
        with open(path, "w", errors="surrogateescape") as f:
            f.write(text)
        os.chmod(path, 0o600)
        values = actions.get(number, monitor)
        done = run_fence(values, env=bed.env(), timeout=60)
        assert done.returncode == 0, (number, text[:80], done.stderr)
        assert "Traceback" not in done.stderr
        assert json.loads(open(path).read())["auth_token"]  # replaced by a working one
    assert bed.cloud.hosts()["host3"]["forced_down"]


def test_damaged_state_in_process_is_retried_once(sim_cloud, token_dir):
    """The state passes set_auth_state, the catalog check too, yet keystoneauth1 trips over
    it later: the call drops it and succeeds with a new token."""
    parsed = params.parse(
        {
            "os_auth_url": sim_cloud.auth_url,
            "os_username": sim_cloud.username,
            "os_password": sim_cloud.password,
            "os_project_name": sim_cloud.project_name,
            "os_interface": "public",
        },
        params.FENCE,
    )
    first = Nova.from_params(parsed)
    first.services(Deadline(10))
    client = Nova.from_params(parsed)
    access = client.transport._adapter.session.auth.auth_ref
    assert access is not None  # from the cache
    access._data["token"]["expires_at"] = ["not", "a", "time"]  # damaged after loading
    posts = len([r for r in sim_cloud.request_log() if r["path"].endswith("/auth/tokens")])
    assert [s.host for s in client.services(Deadline(10))] == ["host1", "host2"]
    assert (
        len([r for r in sim_cloud.request_log() if r["path"].endswith("/auth/tokens")]) == posts + 1
    )


# ---- class 11: the token cache's files and directories -----------------------------------------


def _plugin(auth_url: str = "http://127.0.0.1:9/v3"):
    from keystoneauth1.identity import v3

    return v3.Password(
        auth_url=auth_url,
        username="u",
        password="p",
        project_name="p",
        user_domain_name="Default",
        project_domain_name="Default",
    )


def _state() -> str:
    """A keystoneauth1 auth state (get_auth_state) of a project token valid for an hour."""
    import datetime

    now = datetime.datetime.now(datetime.UTC)
    domain = {"id": "default", "name": "Default"}
    token = {
        "methods": ["password"],
        "user": {"id": "u1", "name": "u", "domain": domain},
        "project": {"id": "p1", "name": "p", "domain": domain},
        "roles": [{"id": "r1", "name": "admin"}],
        "issued_at": now.strftime("%Y-%m-%dT%H:%M:%S.000000Z"),
        "expires_at": (now + datetime.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.000000Z"),
        "catalog": [
            {
                "type": "compute",
                "id": "c1",
                "name": "nova",
                "endpoints": [
                    {
                        "id": f"e-{i}",
                        "interface": i,
                        "region": "R",
                        "region_id": "R",
                        "url": "http://127.0.0.1:9/compute/v2.1",
                    }
                    for i in ("public", "internal")
                ],
            }
        ],
    }
    return json.dumps({"auth_token": "tok", "body": {"token": token}})


def _shown(caplog) -> str:
    """The log as the agents print it (through the redactor)."""
    return "\n".join(log.REDACTOR.redact(r.getMessage()) for r in caplog.records)


def _load_in_thread(cache: token_cache.TokenCache) -> tuple[threading.Thread, list]:
    result: list = []
    thread = threading.Thread(target=lambda: result.append(cache.load()), daemon=True)
    thread.start()
    thread.join(5)
    return thread, result


def test_fifo_at_the_cache_path_does_not_hang(tmp_path, caplog):
    directory = tmp_path / "tokens"
    directory.mkdir(mode=0o700)
    cache = token_cache.TokenCache(_plugin(), str(directory))
    os.mkfifo(cache.path, 0o600)
    thread, result = _load_in_thread(cache)
    if thread.is_alive():  # unblock the reader before failing
        os.close(os.open(cache.path, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(5)
        pytest.fail("TokenCache.load() blocked on a FIFO")
    assert result == [False]
    assert "not a regular file" in _shown(caplog)


def test_fifo_at_the_cache_path_does_not_hang_the_agent(sim_bed):
    bed = sim_bed
    path = _entry(bed)
    if os.path.lexists(path):
        os.unlink(path)
    os.mkfifo(path, 0o600)
    try:
        done = run_fence(bed.fence_params(action="monitor"), env=bed.env(), timeout=30)
    finally:
        if stat.S_ISFIFO(os.lstat(path).st_mode):
            os.unlink(path)
    assert done.returncode == 0, done.stderr


def test_cache_entries_of_other_kinds_are_refused(tmp_path, caplog, monkeypatch):
    directory = tmp_path / "tokens"
    directory.mkdir(mode=0o700)
    cache = token_cache.TokenCache(_plugin(), str(directory))
    target = tmp_path / "elsewhere"
    _plant(str(target), _state())
    os.symlink(target, cache.path)
    assert cache.load() is False
    os.unlink(cache.path)
    _plant(cache.path, _state())
    assert cache.load() is True  # a good one is used
    monkeypatch.setattr(token_cache, "MAX_STATE", 100)
    assert token_cache.TokenCache(_plugin(), str(directory)).load() is False
    assert "larger than 100 bytes" in _shown(caplog)


def test_damaged_entries_are_deleted(tmp_path):
    directory = tmp_path / "tokens"
    directory.mkdir(mode=0o700)
    good = json.loads(_state())
    for text in [
        "{",
        "[]",
        json.dumps({"auth_token": "t", "body": {"token": {}}}),
        json.dumps(dict(good, body={"token": dict(good["body"]["token"], catalog="x")})),
    ]:
        cache = token_cache.TokenCache(_plugin(), str(directory))
        _plant(cache.path, text)
        assert cache.load() is False
        assert not os.path.exists(cache.path)
        assert cache.auth.auth_ref is None


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o722])
def test_writable_cache_directory_is_refused_and_named(tmp_path, caplog, mode):
    directory = tmp_path / "tokens"
    directory.mkdir()
    cache = token_cache.TokenCache(_plugin(), str(directory))
    _plant(cache.path, _state())
    os.chmod(directory, mode)
    assert cache.load() is False
    shown = _shown(caplog)
    assert str(directory) in shown and "******" not in shown
    assert "writable" in shown
    os.unlink(cache.path)
    cache.auth.set_auth_state(_state())
    cache.save()
    assert not os.path.exists(cache.path)


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o277])
def test_cache_directories_are_made_private_whatever_the_umask(tmp_path, monkeypatch, umask):
    directory = tmp_path / "run" / "nova-ha" / "tokens"
    monkeypatch.setenv("NOVA_HA_TOKEN_DIR", str(directory))
    cache = token_cache.TokenCache(_plugin())
    cache.auth.set_auth_state(_state())
    saved = os.umask(umask)
    try:
        cache.save()
    finally:
        os.umask(saved)
    for made in (tmp_path / "run", tmp_path / "run" / "nova-ha", directory):
        assert stat.S_IMODE(os.stat(made).st_mode) == 0o700, made
    assert stat.S_IMODE(os.stat(cache.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path).st_mode) != 0o700 or True  # untouched
    fresh = token_cache.TokenCache(_plugin())
    assert fresh.load() is True


# ---- class 14: where clouds.yaml is read ------------------------------------------------------


def test_clouds_yaml_in_the_working_directory_is_not_read(tmp_path, monkeypatch):
    planted = tmp_path / "cwd"
    planted.mkdir()
    (planted / "clouds.yaml").write_text(
        "clouds:\n  planted:\n    auth:\n      auth_url: http://127.0.0.1:9/v3\n"
        "      username: u\n      password: p\n"
    )
    monkeypatch.chdir(planted)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("OS_CLIENT_CONFIG_FILE", raising=False)
    assert all(not p.startswith(str(planted)) for p in auth._clouds_yaml_paths())
    assert auth._clouds_yaml_paths()[-1] == "/etc/openstack/clouds.yaml"
    with pytest.raises(NovaError) as raised:
        auth.cloud_settings("planted")
    assert "not found" in str(raised.value)
    # The places that are read: the user's, and the file OS_CLIENT_CONFIG_FILE names.
    user = tmp_path / "home" / ".config" / "openstack"
    user.mkdir(parents=True)
    (user / "clouds.yaml").write_text((planted / "clouds.yaml").read_text())
    assert auth.cloud_settings("planted")["os_username"] == "u"
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(planted / "clouds.yaml"))
    assert auth.cloud_settings("planted")["os_password"] == "p"
    monkeypatch.setenv("HOME", "relative")  # a relative HOME is the working directory again
    monkeypatch.delenv("OS_CLIENT_CONFIG_FILE")
    assert auth._clouds_yaml_paths() == ["/etc/openstack/clouds.yaml"]


def test_a_planted_clouds_yaml_gets_no_password(tmp_path, sim_cloud):
    """The fence agent run from a directory holding a clouds.yaml that points at another
    Keystone: nothing is sent there."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "clouds.yaml").write_text(
        f"clouds:\n  overcloud:\n    auth:\n      auth_url: {sim_cloud.auth_url}\n"
        f"      username: {sim_cloud.username}\n      password: {sim_cloud.password}\n"
        f"      project_name: {sim_cloud.project_name}\n    interface: public\n"
    )
    sim_cloud.clear_log()
    env = {k: v for k, v in os.environ.items() if k != "OS_CLIENT_CONFIG_FILE"}
    env["HOME"] = str(tmp_path / "home")
    done = subprocess.run(
        [PYTHON, FENCE_AGENT],
        input=stdin_text({"action": "monitor", "os_cloud": "overcloud"}).encode(),
        capture_output=True,
        timeout=60,
        env=env,
        cwd=str(cwd),
    )
    assert done.returncode != 0
    assert "not found" in done.stderr.decode()
    assert not sim_cloud.request_log()


def test_malformed_clouds_yaml_is_a_nova_error(tmp_path, monkeypatch):
    path = tmp_path / "clouds.yaml"
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(path))
    for text in [
        "clouds: [1, 2]\n",
        "clouds:\n  c: [1]\n",
        "clouds:\n  c:\n    auth: 3\n",
        "{{{{",
        "- a\n",
    ]:
        path.write_text(text)
        with pytest.raises(NovaError):
            auth.cloud_settings("c")
