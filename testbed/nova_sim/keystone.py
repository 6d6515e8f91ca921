"""Keystone v3 under ``/identity``: version discovery, password, application-credential and token
authentication, token validation and revocation, the service catalog."""

from __future__ import annotations

import secrets
from typing import Any

from .model import _HTTPError, _kstime, _now, _Request, _Response, _Token


class KeystoneApi:
    """Keystone v3 (``/identity``)."""

    def _identity_url(self, req: _Request) -> str:
        return f"{req.base}/identity"

    def _identity(self, req: _Request) -> _Response:
        sub = req.path[len("/identity") :]
        v3 = {
            "id": "v3.14",
            "status": "stable",
            "updated": "2020-04-07T00:00:00Z",
            "links": [{"rel": "self", "href": f"{self._identity_url(req)}/v3/"}],
            "media-types": [
                {"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}
            ],
        }
        if sub in ("", "/") and req.method == "GET":
            return self._json_response(
                300,
                {"versions": {"values": [v3]}},
                [("Location", f"{self._identity_url(req)}/v3/"), ("Vary", "X-Auth-Token")],
            )
        if sub in ("/v3", "/v3/") and req.method == "GET":
            return self._json_response(200, {"version": v3}, [("Vary", "X-Auth-Token")])
        if sub == "/v3/auth/tokens":
            if req.method == "POST":
                return self._ks_issue(req)
            if req.method in ("GET", "HEAD"):
                self._ks_check(req)
                tok = self._valid_token(req.headers.get("X-Subject-Token"))
                if tok is None:
                    raise _HTTPError(
                        404, f"Could not find token: {req.headers.get('X-Subject-Token')}."
                    )
                return self._json_response(
                    200, self._token_body(tok, req), [("X-Subject-Token", tok.id)]
                )
            if req.method == "DELETE":
                self._ks_check(req)
                with self._lock:
                    tok = self._tokens.get(req.headers.get("X-Subject-Token") or "")
                    if tok is None:
                        raise _HTTPError(404, "Could not find token.")
                    tok.revoked = True
                return 204, [], b""
        raise _HTTPError(404, "The resource could not be found.")

    def _ks_check(self, req: _Request) -> None:
        if self._valid_token(req.headers.get("X-Auth-Token")) is None:
            raise _HTTPError(
                401,
                "The request you have made requires authentication.",
                [("WWW-Authenticate", f'Keystone uri="{self._identity_url(req)}"')],
            )

    def _valid_token(self, token_id: str | None) -> _Token | None:
        if not token_id:
            return None
        with self._lock:
            tok = self._tokens.get(token_id)
            if tok is None or tok.revoked or tok.expires <= _now():
                return None
            return tok

    def _ks_issue(self, req: _Request) -> _Response:
        unauthorized = _HTTPError(
            401,
            "The request you have made requires authentication.",
            [("WWW-Authenticate", f'Keystone uri="{self._identity_url(req)}"')],
        )
        try:
            body = req.json()
        except _HTTPError as exc:
            raise _HTTPError(
                400,
                "Expecting to find auth in request body. The server could "
                "not comply with the request since it is either malformed or "
                "otherwise incorrect. The client is assumed to be in error.",
            ) from exc
        auth = body.get("auth") if isinstance(body, dict) else None
        identity = auth.get("identity") if isinstance(auth, dict) else None
        methods = identity.get("methods") if isinstance(identity, dict) else None
        if not isinstance(methods, list) or not methods:
            raise _HTTPError(
                400, "Invalid input for field 'identity': 'methods' is a required property"
            )
        assert isinstance(auth, dict) and isinstance(identity, dict)
        scope = auth.get("scope")
        app_cred = False
        if methods == ["application_credential"]:
            cred = identity.get("application_credential") or {}
            ok_id = cred.get("id") == self.app_cred_id
            user = cred.get("user") or {}
            ok_name = cred.get("name") == self.app_cred_name and (
                user.get("id") == self.user_id or user.get("name") == self.username
            )
            if not (ok_id or ok_name) or cred.get("secret") != self.app_cred_secret:
                raise unauthorized
            if scope:
                raise _HTTPError(401, "Application credentials cannot request a scope.")
            scoped = app_cred = True
        elif methods == ["password"]:
            user = (identity.get("password") or {}).get("user") or {}
            domain = user.get("domain") or {}
            ok_user = user.get("id") == self.user_id or (
                user.get("name") == self.username
                and (domain.get("id") == "default" or domain.get("name") == self.user_domain_name)
            )
            if not ok_user or user.get("password") != self.password:
                raise unauthorized
            scoped = self._check_scope(scope, unauthorized)
        elif methods == ["token"]:
            old = self._valid_token((identity.get("token") or {}).get("id"))
            if old is None:
                raise unauthorized
            scoped = self._check_scope(scope, unauthorized) or old.scoped
        else:
            raise unauthorized
        now = _now()
        tok = _Token(
            secrets.token_urlsafe(32),
            list(methods),
            scoped,
            now,
            now + self.token_ttl,
            secrets.token_urlsafe(16)[:22],
            app_cred=app_cred,
        )
        with self._lock:
            self._tokens[tok.id] = tok
        return self._json_response(
            201, self._token_body(tok, req), [("X-Subject-Token", tok.id), ("Vary", "X-Auth-Token")]
        )

    def _check_scope(self, scope: Any, unauthorized: _HTTPError) -> bool:
        if not scope or scope == "unscoped":
            return False
        project = scope.get("project") if isinstance(scope, dict) else None
        if not isinstance(project, dict):
            raise unauthorized
        if project.get("id") == self.project_id:
            return True
        domain = project.get("domain") or {}
        if project.get("name") == self.project_name and (
            domain.get("id") == "default" or domain.get("name") == self.project_domain_name
        ):
            return True
        raise unauthorized

    def _catalog(self, req: _Request) -> list[dict[str, Any]]:
        urls = {"compute": f"{req.base}/compute/v2.1", "identity": f"{req.base}/identity"}
        names = {"compute": "nova", "identity": "keystone"}
        return [
            {
                "endpoints": [
                    {
                        "id": self._endpoint_ids[(svc, iface)],
                        "interface": iface,
                        "region_id": self.region,
                        "url": urls[svc],
                        "region": self.region,
                    }
                    for iface in ("public", "internal", "admin")
                ],
                "id": self._catalog_ids[svc],
                "type": svc,
                "name": names[svc],
            }
            for svc in ("compute", "identity")
        ]

    def _token_body(self, tok: _Token, req: _Request) -> dict[str, Any]:
        domain = {"id": "default", "name": "Default"}
        token: dict[str, Any] = {
            "methods": tok.methods,
            "user": {
                "domain": domain,
                "id": self.user_id,
                "name": self.username,
                "password_expires_at": None,
            },
            "audit_ids": [tok.audit_id],
            "expires_at": _kstime(tok.expires),
            "issued_at": _kstime(tok.issued),
        }
        if tok.scoped:
            token["project"] = {"domain": domain, "id": self.project_id, "name": self.project_name}
            token["is_domain"] = False
            token["roles"] = [{"id": rid, "name": name} for name, rid in self._role_ids.items()]
            token["catalog"] = self._catalog(req)
        if tok.app_cred:
            token["application_credential"] = {
                "id": self.app_cred_id,
                "name": self.app_cred_name,
                "restricted": True,
            }
        return {"token": token}
