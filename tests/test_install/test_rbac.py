"""Least privilege, proven: the chart grants exactly what the operator was seen to use.

The emulator logs every request it serves. The operator's integration tests run
before this module (tests/conftest.py orders it last), so the log holds every
request the operator issued across all scenarios; run alone, this module runs
those tests in a subprocess to get the same log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from modelplane_testkit import helm
from modelplane_testkit.kube_emulator import ACCESS_LOG, Access
from modelplane_testkit.operator_harness import Cluster, running_operator, start_emulator, wait_for
from modelplane_testkit.rbac import Need, Permission, by_operator, granted, needs
from test_operator.samples import minimal

pytestmark = pytest.mark.after_operator_tests

REPO = Path(__file__).resolve().parents[2]
# Granted although no test exercised it, each with the reason. Keep this short.
NOT_EXERCISED: dict[Permission, str] = {
    Permission("modelplane.io", "modeldeployments/finalizers", "update"): (
        "never requested: the OwnerReferencesPermissionEnforcement admission plugin checks it "
        "for the blockOwnerDeletion of every child (tests/test_e2e proves it on a real server)"
    ),
    Permission("modelplane.io", "modelconsumers/finalizers", "update"): (
        "the same check, for the blockOwnerDeletion of a consumer's key Secret"
    ),
}
FORBIDDEN_RESOURCES = {"pods/exec", "pods/attach", "pods/portforward", "nodes"}
# Secrets: only those the operator creates (consumers' keys), read back by name.
SECRET_VERBS = {"get", "create", "patch"}
FORBIDDEN_VERBS = {"escalate", "bind", "impersonate", "*"}
Obj = dict[str, Any]


def _operator_log(tmp_path_factory: pytest.TempPathFactory) -> list[Access]:
    if any(a.user_agent.startswith("kopf/") for a in ACCESS_LOG):
        return list(ACCESS_LOG)
    dump = tmp_path_factory.mktemp("access") / "log.json"
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_operator"],
        cwd=REPO,
        env={**os.environ, "MODELPLANE_ACCESS_LOG": str(dump)},
        check=True,
        timeout=900,
        capture_output=True,
    )
    return [Access(**entry) for entry in json.loads(dump.read_text())]


@pytest.fixture(scope="module")
def used(tmp_path_factory: pytest.TempPathFactory) -> set[Need]:
    found = {need for a in _operator_log(tmp_path_factory) if by_operator(a) for need in needs(a)}
    assert len({n.permission for n in found}) > 10, "too few operator requests seen"
    return found


def _rules(objects: list[Obj], kind: str) -> list[list[Obj]]:
    return [o["rules"] for o in objects if o["kind"] == kind]


def test_every_request_the_operator_issued_is_permitted(used: set[Need]) -> None:
    (rules,) = _rules(helm.template(), "ClusterRole")
    missing = {n.permission for n in used} - granted(rules)
    assert not missing, f"the operator needed: {sorted(map(str, missing))}"


def test_nothing_is_granted_that_the_operator_never_used(used: set[Need]) -> None:
    (rules,) = _rules(helm.template(), "ClusterRole")
    unused = granted(rules) - {n.permission for n in used} - NOT_EXERCISED.keys()
    assert not unused, f"granted but never used: {sorted(map(str, unused))}"


def test_namespaced_roles_carry_the_same_rules() -> None:
    (cluster_rules,) = _rules(helm.template(), "ClusterRole")
    roles = _rules(helm.template({"operator": {"watchNamespaces": ["a", "b"]}}), "Role")
    assert roles == [cluster_rules, cluster_rules]


def test_no_dangerous_grant() -> None:
    (rules,) = _rules(helm.template(), "ClusterRole")
    permissions = granted(rules)  # refuses wildcards
    assert not {p for p in permissions if p.resource in FORBIDDEN_RESOURCES}
    assert not {p for p in permissions if p.verb in FORBIDDEN_VERBS}
    # No list or watch of Secrets: the operator cannot find or follow a Secret it was not
    # told the name of (a ModelConsumer's spec.key.secretName, checked to be its own).
    assert {p.verb for p in permissions if p.resource == "secrets"} == SECRET_VERBS


def test_namespaced_operator_stays_in_its_namespaces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = helm.template({"operator": {"watchNamespaces": ["models"]}})
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args = [a for a in container["args"] if not a.startswith("--liveness")]
    (role_rules,) = _rules(objects, "Role")
    start = len(ACCESS_LOG)
    with start_emulator() as emulator, running_operator(tmp_path, monkeypatch, emulator, args):
        cluster = Cluster(emulator)
        for namespace in ("elsewhere", "models"):
            md = minimal()
            md["metadata"] = {"name": "scoped", "namespace": namespace}
            cluster.create("modeldeployments", md)
        wait_for(lambda: cluster.get("deployments", "models", "scoped"), "the Deployment")
        wait_for(
            lambda: (cluster.get("modeldeployments", "models", "scoped") or {}).get("status"),
            "the status",
        )
        assert cluster.get("deployments", "elsewhere", "scoped") is None
    seen = {n for a in ACCESS_LOG[start:] if by_operator(a) for n in needs(a)}
    assert seen
    assert {n.namespace for n in seen} == {"models"}, "a request outside the watched namespace"
    assert {n.permission for n in seen} <= granted(role_rules)
