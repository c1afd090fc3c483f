"""Policies as a client changes and reads them through the workers (see
:meth:`shoal.Client.set_policy`). Fields are checked here first, so that a bad one fails
before any request; the worker checks them again, and refuses those it does not enforce."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..control._policy import Policy, field_name
from ._router import Router

__all__ = ["effective_policy", "policies", "remove_policy", "set_policy"]


def set_policy(router: Router, path: str, fields: Mapping[str, Any]) -> dict:
    """``policy_set`` on the home worker, then on the others of a membership file."""
    header = {"op": "policy_set", "path": path, "policy": Policy.from_fields(fields).to_json()}
    rule = router.call(header)["policy"]
    router.broadcast(header)
    return rule


def remove_policy(router: Router, path: str, fields: Iterable[str]) -> dict:
    """``policy_rm`` on the home worker, then on the others of a membership file."""
    header = {"op": "policy_rm", "path": path, "fields": [field_name(f) for f in fields]}
    rule = router.call(header)["policy"]
    router.broadcast(header, FileNotFoundError)
    return rule


def policies(router: Router) -> list[dict]:
    """Every policy the home worker enforces."""
    return router.call({"op": "policies"})["policies"]


def effective_policy(router: Router, path: str) -> dict:
    """The policy in force at ``path``, as the home worker resolves it."""
    return router.call({"op": "policy_show", "path": path})["effective"]
