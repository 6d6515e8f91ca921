"""Who nova-ha is to Keystone: clouds.yaml, the os_* parameters, password scripts, and the
Keystone session the transport sends its calls through.

Every problem met while making the client (an unreadable clouds.yaml, a password script
that fails) is an ``AuthError``, a NovaError: callers making a client catch NovaError only.
"""

from __future__ import annotations

import os
import time
from typing import Any

from nova_ha.lib import log, params
from nova_ha.openstack.exceptions import AuthError, Unavailable
from nova_ha.openstack.transport import printable, read_body


def _clouds_yaml_paths() -> list[str]:
    """Where clouds.yaml is read: the file OS_CLIENT_CONFIG_FILE names, the user's
    ~/.config/openstack/ and /etc/openstack/. Never the working directory (openstacksdk's
    first choice): a clouds.yaml planted there would be sent the operator's password."""
    explicit = os.environ.get("OS_CLIENT_CONFIG_FILE")
    home = os.path.expanduser("~")
    paths = [explicit] if explicit else []
    if os.path.isabs(home):  # a relative HOME would be the working directory again
        paths.append(os.path.join(home, ".config", "openstack", "clouds.yaml"))
    return paths + ["/etc/openstack/clouds.yaml"]


def _read_yaml(path: str) -> dict[str, Any]:
    """The `clouds` mapping of a clouds.yaml/secure.yaml ({} when it has none)."""
    import yaml  # noqa: PLC0415  (only when os_cloud is used)

    try:
        with open(path) as stream:
            doc = yaml.safe_load(stream)
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise AuthError(
            f"parameter 'os_cloud': cannot read {path}: "
            f"{getattr(err, 'strerror', None) or type(err).__name__}"
        ) from None
    clouds = doc.get("clouds") if isinstance(doc, dict) else None
    return clouds if isinstance(clouds, dict) else {}


def cloud_settings(name: str) -> dict[str, Any]:
    """The named cloud of clouds.yaml (merged with secure.yaml beside it), flattened."""
    for path in _clouds_yaml_paths():
        if not os.path.isfile(path):
            continue
        clouds = _read_yaml(path)
        if name not in clouds:
            continue
        cloud = clouds[name] or {}
        secure = os.path.join(os.path.dirname(path), "secure.yaml")
        if os.path.isfile(secure):
            extra = _read_yaml(secure).get(name) or {}
            cloud = (
                _merge(cloud, extra)
                if isinstance(cloud, dict) and isinstance(extra, dict)
                else cloud
            )
        if not isinstance(cloud, dict) or not isinstance(cloud.get("auth") or {}, dict):
            raise AuthError(
                f"parameter 'os_cloud': cloud {name!r} in {path} is not a "
                "mapping with an 'auth' mapping"
            )
        flat = {f"os_{k}": v for k, v in (cloud.get("auth") or {}).items()}
        for key in ("region_name", "interface", "cacert", "cert", "key"):
            if key in cloud:
                flat[f"os_{key}"] = cloud[key]
        if "verify" in cloud:
            flat["os_insecure"] = not cloud["verify"]
        return flat
    raise AuthError(
        f"parameter 'os_cloud': cloud {name!r} not found in "
        f"{', '.join(p for p in _clouds_yaml_paths())}"
    )


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def auth_settings(openstack: params.OpenStackSettings) -> dict[str, Any]:
    """os_* settings: clouds.yaml first, then parameters given here, then scripts."""
    values = params.parameter_values(openstack)
    settings: dict[str, Any] = {}
    if openstack.cloud:
        settings.update(cloud_settings(openstack.cloud))
    for name in openstack.given:
        if values.get(name) not in (None, ""):
            settings[name] = values[name]
    for name in (
        "os_user_domain_name",
        "os_project_domain_name",
        "os_interface",
        "os_api_timeout",
        "os_compute_api_version",
    ):
        settings.setdefault(name, values[name])
    if openstack.password_script and not openstack.password:
        settings["os_password"] = _script_password(openstack.password_script)
    interface = str(settings.get("os_interface") or "internal").lower()
    settings["os_interface"] = interface[:-3] if interface.endswith("url") else interface
    log.REDACTOR.add(
        *(
            str(settings[k])
            for k in ("os_password", "os_application_credential_secret")
            if settings.get(k)
        )
    )
    return settings


def _script_password(command: str) -> str:
    """The password os_password_script prints; a script that fails is an AuthError."""
    try:
        return params.run_secret_script("os_password_script", command)
    except params.SecretScriptError as err:
        raise AuthError(str(err)) from None


def make_session(settings: dict[str, Any]) -> Any:
    """The keystoneauth1 session of the settings (auth_settings), with bounded replies."""
    from keystoneauth1 import session as ks_session  # noqa: PLC0415

    auth = _auth_plugin(settings)
    verify: bool | str = True
    if settings.get("os_insecure") in (True, "1", "true", "True"):
        verify = False
    elif settings.get("os_cacert"):
        verify = settings["os_cacert"]
    cert = None
    if settings.get("os_cert"):
        cert = (
            (settings["os_cert"], settings["os_key"])
            if settings.get("os_key")
            else settings["os_cert"]
        )
    # One HTTP connection per concurrent request (requests keeps 10 per host by default:
    # with max_parallel=16 six of them would be opened and thrown away each round).
    import requests  # noqa: PLC0415

    http = requests.Session()
    adapter = _bounded_adapter(
        pool_connections=4, pool_maxsize=int(settings.get("pool_size") or 10)
    )
    http.mount("https://", adapter)
    http.mount("http://", adapter)
    return ks_session.Session(
        auth=auth,
        verify=verify,
        cert=cert,
        session=http,
        timeout=float(settings.get("os_api_timeout") or 10),
    )


def _auth_plugin(settings: dict[str, Any]) -> Any:
    """keystoneauth1's v3 plugin: an application credential, or a password."""
    from keystoneauth1.identity import v3  # noqa: PLC0415

    if settings.get("os_application_credential_id"):
        credential: dict[str, Any] = {
            "auth_url": settings["os_auth_url"],
            "application_credential_id": settings["os_application_credential_id"],
            "application_credential_secret": settings.get("os_application_credential_secret"),
        }
        return v3.ApplicationCredential(**credential)
    password: dict[str, Any] = {
        name: settings.get(f"os_{name}")
        for name in (
            "auth_url",
            "username",
            "password",
            "project_name",
            "user_domain_name",
            "project_domain_name",
        )
    }
    return v3.Password(**password)


def _bounded_adapter(**kwargs: Any) -> Any:
    """A requests transport that reads every reply its caller does not stream (Keystone's:
    the token and catalog, version discovery) with the bounds of Nova's: MAX_BODY bytes,
    the call's timeout. Nova's replies are streamed and bounded by Nova.request."""
    import requests  # noqa: PLC0415

    class BoundedAdapter(requests.adapters.HTTPAdapter):
        def send(
            self,
            request: Any,
            stream: bool = False,
            timeout: Any = None,
            verify: Any = True,
            cert: Any = None,
            proxies: Any = None,
        ) -> Any:
            resp = super().send(
                request, stream=True, timeout=timeout, verify=verify, cert=cert, proxies=proxies
            )
            if stream:
                return resp
            limit = timeout[-1] if isinstance(timeout, tuple) else timeout
            _, problem, _ = read_body(resp, time.monotonic() + float(limit or 30) + 1.0)
            if problem:
                from urllib.parse import urlsplit  # noqa: PLC0415

                where = urlsplit(request.url)
                raise Unavailable(
                    printable(f"{request.method} {where.netloc}{where.path}: {problem}"[:300])
                )
            return resp

    return BoundedAdapter(**kwargs)
