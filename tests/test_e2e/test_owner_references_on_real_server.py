"""Finding 2: where OwnerReferencesPermissionEnforcement runs (OpenShift turns it on),
children with blockOwnerDeletion need `update` on modeldeployments/finalizers. The
chart grants it; without it the status says what was refused, and once RBAC is
fixed the running operator creates the children by itself (no restart)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelplane_testkit import helm
from modelplane_testkit.control_plane import ApiServer
from modelplane_testkit.real_cluster import RealCluster
from test_e2e.conftest import (
    OPERATOR_ACCOUNT,
    RELEASE_NAMESPACE,
    account_token,
    helm_install,
    operator_as,
    start_or_skip,
)
from test_e2e.test_operator_on_real_server import _md, ready, wait_for, wait_reason

PLUGIN = "OwnerReferencesPermissionEnforcement"
NS = "openshift-like"


@pytest.fixture
def enforcing_server(tmp_path: Path) -> Iterator[ApiServer]:
    yield from start_or_skip(tmp_path / "enforcing", admission_plugins=(PLUGIN,))


def _finalizers_rule_index(server: ApiServer) -> int:
    role = json.loads(server.kubectl("get", "clusterrole", helm.RELEASE, "-o", "json"))
    (index,) = [
        i
        for i, rule in enumerate(role["rules"])
        if "modeldeployments/finalizers" in rule["resources"]
    ]
    return index


def test_children_need_finalizers_rights_and_appear_once_granted(
    enforcing_server: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = enforcing_server
    admin = RealCluster(server)
    helm_install(server, helm.RELEASE)
    server.wait_established("modeldeployments.modelplane.io", timeout=30)
    index = _finalizers_rule_index(server)
    removed = json.dumps([{"op": "remove", "path": f"/rules/{index}"}])
    server.kubectl("patch", "clusterrole", helm.RELEASE, "--type=json", "-p", removed)
    admin.namespace(NS)
    token = account_token(server, RELEASE_NAMESPACE, OPERATOR_ACCOUNT)
    with operator_as(server, token, tmp_path, monkeypatch):
        admin.create("modeldeployments", _md(NS))
        refused = wait_reason(admin, NS, "Forbidden")
        assert "blockOwnerDeletion" in refused["message"], refused
        assert admin.get("deployments", NS, "demo") is None

        # The chart's rule back (helm upgrade would do the same): no restart needed.
        restored = json.dumps(
            [
                {
                    "op": "add",
                    "path": f"/rules/{index}",
                    "value": {
                        "apiGroups": ["modelplane.io"],
                        "resources": ["modeldeployments/finalizers"],
                        "verbs": ["update"],
                    },
                }
            ]
        )
        server.kubectl("patch", "clusterrole", helm.RELEASE, "--type=json", "-p", restored)
        wait_for(lambda: admin.get("deployments", NS, "demo"), "the Deployment", timeout=90)
        wait_for(lambda: admin.get("services", NS, "demo"), "the Service")
        wait_for(lambda: ready(admin, NS).get("reason") != "Forbidden", "Forbidden cleared")
