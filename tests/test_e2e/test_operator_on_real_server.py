"""The operator on a real control plane, as the chart's ServiceAccount: the real
authorizer judges every request, the real Deployment, ReplicaSet, HPA, disruption
and garbage-collector controllers and the real scheduler act, a test plays the
kubelet, and the API server's audit log counts every write."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kopf.testing import KopfRunner

from modelplane_operator.kopf_setup import LIST_CHUNK_SIZE
from modelplane_testkit import helm
from modelplane_testkit.control_plane import ApiServer, describe, writes_by
from modelplane_testkit.kubelet import FETCH_FAILURE, LOAD_FAILURE, KubeletPlayer
from modelplane_testkit.operator_harness import wait_for as harness_wait_for
from modelplane_testkit.real_cluster import RealCluster
from test_e2e.conftest import OPERATOR_USER, account_token, helm_install, local_only, operator_as
from test_operator.samples import minimal

T = TypeVar("T")
Obj = dict[str, Any]
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted"}


def wait_for(check: Callable[[], T | None], what: str, timeout: float = 60.0) -> T:
    """The emulator tests' bounded wait, with a real control plane's patience."""
    return harness_wait_for(check, what, timeout)


def wait_generation(admin: RealCluster, namespace: str, generation: int) -> None:
    wait_for(
        lambda: (
            (admin.get("modeldeployments", namespace, "demo") or {})
            .get("status", {})
            .get("observedGeneration")
            == generation
        ),
        f"observedGeneration {generation} in {namespace}",
    )


def _md(namespace: str, name: str = "demo", **spec: Obj | int) -> Obj:
    obj = minimal(**spec)
    obj["metadata"] = {"name": name, "namespace": namespace}
    return obj


def condition(md: Obj | None, kind: str) -> Obj:
    for found in (md or {}).get("status", {}).get("conditions", []):
        if found["type"] == kind:
            result: Obj = found
            return result
    return {}


def ready(admin: RealCluster, namespace: str, name: str = "demo") -> Obj:
    return condition(admin.get("modeldeployments", namespace, name), "Ready")


def wait_reason(admin: RealCluster, namespace: str, reason: str, timeout: float = 60) -> Obj:
    def with_reason() -> Obj | None:
        found = ready(admin, namespace)
        return found if found.get("reason") == reason else None

    return wait_for(with_reason, f"Ready reason {reason} in {namespace}", timeout)


def settle(server: ApiServer, quiet: float = 3.0, timeout: float = 60.0) -> int:
    """Wait until the operator has written nothing for ``quiet`` seconds; the audit mark."""
    local_only(server, "audit log, to count writes")
    deadline = time.monotonic() + timeout
    mark = server.audit_mark()
    since = time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, "the operator never settled"
        time.sleep(0.5)
        now = server.audit_mark()
        if writes_by(server.audit(mark), OPERATOR_USER):
            mark, since = now, time.monotonic()
    return server.audit_mark()


def operator_writes(server: ApiServer, since: int) -> list[str]:
    return [describe(e) for e in writes_by(server.audit(since), OPERATOR_USER)]


# --- scenarios ----------------------------------------------------------------------------


def test_create_ready_update_and_delete(
    installed: ApiServer, admin: RealCluster, kubelet: KubeletPlayer, operator: KopfRunner
) -> None:
    ns = "lifecycle"
    admin.namespace(ns, RESTRICTED)  # the real Pod Security admission judges the pods
    created = admin.create("modeldeployments", _md(ns, replicas=2))
    for plural in ("deployments", "services", "poddisruptionbudgets"):
        child = wait_for(lambda p=plural: admin.get(p, ns, "demo"), plural)  # type: ignore[misc]
        (owner,) = child["metadata"]["ownerReferences"]
        assert owner["uid"] == created["metadata"]["uid"]
    # Ready only once the real Deployment controller reports every replica available.
    wait_reason(admin, ns, "Available")
    deployment = admin.get("deployments", ns, "demo")
    assert deployment is not None
    assert deployment["status"]["availableReplicas"] == 2
    md = admin.get("modeldeployments", ns, "demo")
    assert md is not None
    assert md["status"]["readyReplicas"] == 2

    # An update rolls out a new ReplicaSet; Ready again at generation 2.
    admin.patch(
        "modeldeployments", ns, "demo", {"spec": {"runtime": {"warmup": {"iterations": 7}}}}
    )
    wait_generation(admin, ns, 2)
    wait_for(lambda: len(admin.list("replicasets", ns)) == 2, "a second ReplicaSet")
    wait_reason(admin, ns, "Available")

    # Deleted: the real garbage collector removes every child, pods included.
    admin.delete("modeldeployments", ns, "demo")
    for plural in ("deployments", "services", "poddisruptionbudgets", "replicasets", "pods"):
        wait_for(lambda p=plural: not admin.list(p, ns), f"{plural} collected")  # type: ignore[misc]


def test_gpu_pods_wait_for_a_gpu_node_and_land_on_it(
    installed: ApiServer, admin: RealCluster, kubelet: KubeletPlayer, operator: KopfRunner
) -> None:
    ns = "gpu"
    admin.namespace(ns)
    admin.create("modeldeployments", _md(ns, resources={"gpu": {"count": 1}}))
    unschedulable = wait_reason(admin, ns, "Unschedulable")
    assert "nvidia.com/gpu" in unschedulable["message"], unschedulable
    kubelet.register_node("gpu-1", gpus=2)
    wait_reason(admin, ns, "Available", timeout=120)
    (pod,) = admin.list("pods", ns)
    assert pod["spec"]["nodeName"] == "gpu-1"
    admin.delete("modeldeployments", ns, "demo")


def test_replicas_survive_autoscaling_on_a_real_hpa(
    installed: ApiServer, admin: RealCluster, kubelet: KubeletPlayer, operator: KopfRunner
) -> None:
    """Finding 3: the real HPA does not write while 5 is within 2..8, and 5 must stay."""
    ns = "scaling"
    admin.namespace(ns)
    admin.create("modeldeployments", _md(ns, replicas=5))
    wait_reason(admin, ns, "Available", timeout=120)
    admin.patch(
        "modeldeployments",
        ns,
        "demo",
        {"spec": {"autoscaling": {"minReplicas": 2, "maxReplicas": 8}}},
    )
    wait_for(lambda: admin.get("horizontalpodautoscalers", ns, "demo"), "the HPA")
    settle(installed)
    admin.patch(
        "modeldeployments", ns, "demo", {"spec": {"runtime": {"warmup": {"iterations": 6}}}}
    )
    wait_for(lambda: len(admin.list("replicasets", ns)) == 2, "the rollout of the change")
    time.sleep(8)  # more than one HPA sync period (5 s here)
    deployment = admin.get("deployments", ns, "demo")
    assert deployment is not None
    assert deployment["spec"]["replicas"] == 5  # without the hand-over: 1, then the HPA's 2
    owners = {
        e["manager"] for e in deployment["metadata"]["managedFields"] if "f:replicas" in str(e)
    }
    assert "modelplane-operator" not in owners, owners

    # Off: one DELETE for the HPA, one for the PDB, none answered 404.
    mark = settle(installed)
    # One replica: no disruption budget either (it would block node drains).
    admin.patch("modeldeployments", ns, "demo", {"spec": {"autoscaling": None, "replicas": 1}})
    wait_for(lambda: admin.get("horizontalpodautoscalers", ns, "demo") is None, "no HPA")
    wait_for(lambda: admin.get("poddisruptionbudgets", ns, "demo") is None, "no PDB")
    wait_for(
        lambda: (admin.get("deployments", ns, "demo") or {}).get("spec", {}).get("replicas") == 1,
        "1 replica",
    )
    settle(installed)
    deletes = [w for w in operator_writes(installed, mark) if w.startswith("delete")]
    assert sorted(deletes) == [
        "delete horizontalpodautoscalers demo -> 200",
        "delete poddisruptionbudgets demo -> 200",
    ], deletes
    admin.delete("modeldeployments", ns, "demo")


def test_drift_is_repaired_with_one_apply(
    installed: ApiServer, admin: RealCluster, kubelet: KubeletPlayer, operator: KopfRunner
) -> None:
    ns = "drift"
    admin.namespace(ns)
    admin.create("modeldeployments", _md(ns))
    wait_reason(admin, ns, "Available")
    mark = settle(installed)
    installed.kubectl("set", "image", "deployment/demo", "runtime=evil/image:latest", "-n", ns)
    wait_for(
        lambda: (
            (admin.get("deployments", ns, "demo") or {})["spec"]["template"]["spec"]["containers"][
                0
            ]["image"]
            != "evil/image:latest"
        ),
        "the image restored",
    )
    settle(installed)
    applies = [w for w in operator_writes(installed, mark) if w.startswith("patch deployments")]
    assert applies == ["patch deployments demo -> 200"], operator_writes(installed, mark)

    admin.delete("services", ns, "demo")
    wait_for(lambda: admin.get("services", ns, "demo"), "the Service restored")
    admin.delete("modeldeployments", ns, "demo")


def test_refused_pods_and_failed_fetches_and_loads_reach_the_status_at_once(
    installed: ApiServer, admin: RealCluster, kubelet: KubeletPlayer, operator: KopfRunner
) -> None:
    """Finding 4: a missing ServiceAccount refuses the pods; the status says so with the
    API server's message, Stalled, long before the progress deadline."""
    ns = "refused"
    admin.namespace(ns)
    started = time.monotonic()
    admin.create(
        "modeldeployments",
        _md(
            ns,
            model={"uri": "s3://b/m.onnx", "credentials": {"serviceAccountName": "model-reader"}},
        ),
    )
    refused = wait_reason(admin, ns, "FailedCreate")
    assert time.monotonic() - started < 60
    assert 'serviceaccount "model-reader" not found' in refused["message"], refused
    assert condition(admin.get("modeldeployments", ns, "demo"), "Stalled")["status"] == "True"
    admin.create(
        "serviceaccounts",
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "model-reader", "namespace": ns},
        },
    )
    wait_reason(admin, ns, "Available", timeout=120)

    kubelet.fetch_fails.add("fetching")
    admin.namespace("fetching")
    admin.create("modeldeployments", _md("fetching"))
    failed = wait_reason(admin, "fetching", "ModelFetchFailed")
    assert FETCH_FAILURE in failed["message"]

    kubelet.load_fails.add("loading")  # fetched, but not a model the runtime can load
    admin.namespace("loading")
    admin.create("modeldeployments", _md("loading"))
    not_loaded = wait_reason(admin, "loading", "ModelLoadFailed")
    assert not_loaded["message"] == LOAD_FAILURE
    for namespace in (ns, "fetching", "loading"):
        admin.delete("modeldeployments", namespace, "demo")


def test_a_rejected_child_is_reported_under_its_own_reason(
    installed: ApiServer, admin: RealCluster, operator: KopfRunner
) -> None:
    """Finding 6: the Warning event says ChildRejected when the status does."""
    ns = "rejected"
    admin.namespace(ns)
    bad_affinity: Obj = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {}}}
    admin.create("modeldeployments", _md(ns, scheduling={"affinity": bad_affinity}))
    rejected = wait_reason(admin, ns, "ChildRejected")
    assert "nodeSelectorTerms" in rejected["message"], rejected
    events = wait_for(
        lambda: [e for e in admin.list("events", ns) if e.get("type") == "Warning"],
        "a Warning event",
    )
    assert {e["reason"] for e in events} == {"ChildRejected"}
    assert admin.get("deployments", ns, "demo") is None
    assert admin.get("services", ns, "demo") is None  # nothing half-created
    admin.patch("modeldeployments", ns, "demo", {"spec": {"scheduling": {"affinity": None}}})
    wait_for(lambda: admin.get("deployments", ns, "demo"), "the Deployment after the fix")
    admin.delete("modeldeployments", ns, "demo")


def test_idle_restart_and_canonical_quantities_write_nothing(  # noqa: PLR0917 - fixtures
    installed: ApiServer,
    admin: RealCluster,
    kubelet: KubeletPlayer,
    operator_token: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Quantities the API server rewrites (0.5 -> 500m) cause no write on the next reconcile;
    a restart with nothing changed writes nothing; one change, one apply of one child."""
    ns = "quantities"
    admin.namespace(ns)
    spec = {
        "resources": {
            "requests": {"cpu": "0.5", "memory": "1024Mi"},
            "limits": {"cpu": "1.5", "memory": "1Gi"},
        }
    }
    with operator_as(installed, operator_token, tmp_path, monkeypatch):
        admin.create("modeldeployments", _md(ns, "demo", **spec))
        wait_reason(admin, ns, "Available")
        deployment = admin.get("deployments", ns, "demo")
        assert deployment is not None
        resources = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]
        assert resources["requests"]["cpu"] == "500m"  # the server's canonical form
        mark = settle(installed)
    with operator_as(installed, operator_token, tmp_path, monkeypatch):
        time.sleep(8)  # resumed, every object reconciled, nothing to do
        assert operator_writes(installed, mark) == []
        # Listed in pages, as client-go's pager does: one response per kind would be held
        # whole while its objects are handed out (10,000 Deployments at once).
        lists = [
            e["requestURI"]
            for e in installed.audit(mark)
            if e.get("verb") == "list" and e.get("user", {}).get("username") == OPERATOR_USER
        ]
        assert lists, "the restarted operator listed nothing"
        assert all(f"limit={LIST_CHUNK_SIZE}" in uri for uri in lists), lists
        admin.patch("modeldeployments", ns, "demo", {"spec": {"runtime": {"image": "r:2"}}})
        wait_generation(admin, ns, 2)
        settle(installed)
        writes = operator_writes(installed, mark)
        assert [w for w in writes if not w.startswith("patch modeldeployments/status")] == [
            "patch deployments demo -> 200"
        ], writes
    admin.delete("modeldeployments", ns, "demo")


def test_namespaced_operator_is_refused_elsewhere_and_keeps_serving(
    installed: ApiServer, admin: RealCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin.namespace("team-b")
    admin.namespace("team-c")
    helm_install(installed, "teamb", {"operator.watchNamespaces": ["team-b"]})
    objects = helm.template({"operator": {"watchNamespaces": ["team-b"]}}, release="teamb")
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    for env in container["env"]:
        monkeypatch.setenv(env["name"], env["value"])
    args = [a for a in container["args"] if not a.startswith("--liveness")]
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    token = account_token(installed, "modelplane-system", account)
    user = f"system:serviceaccount:modelplane-system:{account}"
    local_only(installed, "audit log")
    mark = installed.audit_mark()
    with operator_as(installed, token, tmp_path, monkeypatch, args):
        admin.create("modeldeployments", _md("team-c"))
        admin.create("modeldeployments", _md("team-b"))
        wait_for(lambda: admin.get("deployments", "team-b", "demo"), "the Deployment in team-b")
        scoped = RealCluster(installed, token)
        assert scoped.http.get(scoped.url("deployments", "team-c"), timeout=10).status_code == 403
        time.sleep(2)
        assert admin.get("deployments", "team-c", "demo") is None
    events = [e for e in installed.audit(mark) if e.get("user", {}).get("username") == user]
    assert events
    refused = [describe(e) for e in events if e.get("responseStatus", {}).get("code") == 403]
    assert refused == ["list deployments None -> 403"], refused  # only the probe above
    namespaces = {e.get("objectRef", {}).get("namespace") for e in events} - {None}
    assert namespaces <= {"team-b", "team-c"}
    for namespace in ("team-b", "team-c"):
        admin.delete("modeldeployments", namespace, "demo")


def test_the_operator_was_never_refused(installed: ApiServer) -> None:
    """Across every scenario above, the chart's RBAC allowed every request (zero 403s)."""
    local_only(installed, "audit log")
    events = [e for e in installed.audit() if e.get("user", {}).get("username") == OPERATOR_USER]
    assert len(events) > 50
    refused = [describe(e) for e in events if e.get("responseStatus", {}).get("code") == 403]
    assert refused == []
