"""Kubernetes RBAC, as far as the operator's tests need it: what a request asks for, and
whether a set of rules allows it.

A request is mapped to (API group, resource[/subresource], verb) as the API server's
request-info resolver does; a server-side apply is authorized as ``patch`` and, when
it creates the object, as ``create`` too, so an applier needs both.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from modelplane_testkit.kube_emulator import Access

OPERATOR_AGENTS = ("kopf/", "OpenAPI-Generator/")  # kopf's aiohttp, the kubernetes client


@dataclass(frozen=True, order=True)
class Permission:
    group: str
    resource: str  # "deployments" or "modeldeployments/status"
    verb: str

    def __str__(self) -> str:
        return f"{self.verb} {self.resource}.{self.group or 'core'}"


@dataclass(frozen=True)
class Need:
    permission: Permission
    namespace: str | None  # None: a cluster-wide request (all namespaces)


def by_operator(access: Access) -> bool:
    return access.user_agent.startswith(OPERATOR_AGENTS)


def needs(access: Access) -> list[Need]:
    """What the authorizer checks for this request; [] for discovery (non-resource URLs)."""
    parts = access.path.strip("/").split("/")
    if parts[0] == "api":
        group, rest = "", parts[2:]
    elif parts[0] == "apis" and len(parts) > 3:
        group, rest = parts[1], parts[3:]
    else:
        return []  # /api, /api/v1, /apis, /apis/<group>/<version>: discovery
    if not rest:
        return []
    namespace = None
    if rest[0] == "namespaces" and len(rest) > 2:
        namespace, rest = rest[1], rest[2:]
    resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
    named = len(rest) > 1
    verbs = {
        "GET": ["get"] if named else ["watch" if access.watch else "list"],
        "POST": ["create"],
        "PUT": ["update"],
        "PATCH": ["patch", "create"] if "apply-patch" in access.content_type else ["patch"],
        "DELETE": ["delete"] if named else ["deletecollection"],
    }[access.method]
    return [Need(Permission(group, resource, verb), namespace) for verb in verbs]


def granted(rules: Iterable[dict[str, Any]]) -> set[Permission]:
    """Every permission the rules spell out; wildcards are refused, not expanded."""
    found: set[Permission] = set()
    for rule in rules:
        assert "resourceNames" not in rule, rule
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], f"wildcard in {field}: {rule}"
        found |= {
            Permission(group, resource, verb)
            for group in rule["apiGroups"]
            for resource in rule["resources"]
            for verb in rule["verbs"]
        }
    return found
