"""Fault injection: failing or hanging requests, revoked tokens, failing and conflicting
evacuations."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable
from typing import Any

from .model import _UNEXPECTED_API_ERROR, _Request, _Response, _Rule


class Faults:
    """Faults the tests inject."""

    def fail_next(
        self,
        path_regex: str,
        status: int = 500,
        count: int = 1,
        method: str | None = None,
        *,
        apply: bool = False,
        message: str | None = None,
    ) -> None:
        """The next ``count`` requests whose path matches (re.search) answer ``status``.

        With ``apply=True`` the request is processed first and only its response is
        replaced (a lost reply).
        """
        with self._lock:
            self._fail_rules.append(
                _Rule(
                    re.compile(path_regex),
                    method and method.upper(),
                    count,
                    status=status,
                    apply=apply,
                    message=message,
                )
            )

    def timeout_next(
        self,
        path_regex: str,
        seconds: float,
        count: int = 1,
        method: str | None = None,
        *,
        respond: bool = True,
    ) -> None:
        """Hang the next ``count`` matching requests for ``seconds``.

        Afterwards the request is processed and answered normally (``respond=True``,
        what a slow API does) or the connection is closed without processing it.
        """
        with self._lock:
            self._timeout_rules.append(
                _Rule(
                    re.compile(path_regex),
                    method and method.upper(),
                    count,
                    seconds=seconds,
                    respond=respond,
                )
            )

    def expire_tokens(self) -> None:
        """Revoke every issued token: the next compute call gets 401; re-auth works."""
        with self._lock:
            for tok in self._tokens.values():
                tok.revoked = True

    def evacuate_fail(
        self,
        which: Iterable[str] | Callable[[dict[str, Any]], bool] | float | None,
    ) -> None:
        """Make evacuations fail on the destination compute.

        ``which``: server ids, a predicate on the server dict, a probability in
        [0, 1], or None to clear. The server goes to ERROR (task_state None) and its
        migration to ``failed`` (nova's compute-side failure path).
        """
        with self._lock:
            self._evac_fail_ids = set()
            self._evac_fail_pred = None
            self._evac_fail_prob = 0.0
            if which is None:
                return
            if callable(which):
                self._evac_fail_pred = which
            elif isinstance(which, int | float):
                self._evac_fail_prob = float(which)
            elif isinstance(which, str):
                self._evac_fail_ids = {which}
            else:
                self._evac_fail_ids = set(which)

    def conflict_next_evacuate(self, count: int = 1) -> None:
        """The next ``count`` evacuate calls answer 409 as if a task were in progress."""
        with self._lock:
            self._conflict_evacuates += count

    def reset_faults(self) -> None:
        with self._lock:
            self._fail_rules.clear()
            self._timeout_rules.clear()
            self._conflict_evacuates = 0
            self._evac_fail_ids = set()
            self._evac_fail_pred = None
            self._evac_fail_prob = 0.0
            self._api_down = False
            self.latency = 0.0

    def _should_fail_evacuation(self, server: dict[str, Any]) -> bool:
        if server["id"] in self._evac_fail_ids:
            return True
        if self._evac_fail_pred is not None and self._evac_fail_pred(copy.deepcopy(server)):
            return True
        return self._evac_fail_prob > 0 and self._rand.random() < self._evac_fail_prob

    @staticmethod
    def _take_rule(rules: list[_Rule], method: str, path: str) -> _Rule | None:
        for rule in rules:
            if (rule.method is None or rule.method == method) and rule.regex.search(path):
                rule.count -= 1
                if rule.count <= 0:
                    rules.remove(rule)
                return rule
        return None

    def _injected_failure(self, req: _Request, rule: _Rule) -> _Response:
        status = rule.status
        if req.path.startswith("/identity"):
            message = (
                rule.message
                or "An unexpected error prevented the server from fulfilling your request."
            )
            return self._ks_error(status, message)
        message = rule.message or (
            _UNEXPECTED_API_ERROR if status == 500 else f"NovaSim injected HTTP {status}"
        )
        return self._nova_fault(status, message, req)
