"""Real kopf against the emulator over HTTP: set-up, a small client, bounded waits."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
from kopf.testing import KopfRunner

from modelplane_testkit.kube_emulator import ACCESS_LOG, EmulatorThread

T = TypeVar("T")
MD_PATH = "/apis/modelplane.io/v1alpha1/namespaces/{ns}/modeldeployments"
PATHS = {
    "modeldeployments": MD_PATH,
    "deployments": "/apis/apps/v1/namespaces/{ns}/deployments",
    "services": "/api/v1/namespaces/{ns}/services",
    "horizontalpodautoscalers": "/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers",
    "poddisruptionbudgets": "/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets",
    "pods": "/api/v1/namespaces/{ns}/pods",
    "modelconsumers": "/apis/modelplane.io/v1alpha1/namespaces/{ns}/modelconsumers",
    "configmaps": "/api/v1/namespaces/{ns}/configmaps",
    "secrets": "/api/v1/namespaces/{ns}/secrets",
    "events": "/api/v1/namespaces/{ns}/events",
    "scaledobjects": "/apis/keda.sh/v1alpha1/namespaces/{ns}/scaledobjects",
    "httpscaledobjects": "/apis/http.keda.sh/v1alpha1/namespaces/{ns}/httpscaledobjects",
    "httproutes": "/apis/gateway.networking.k8s.io/v1/namespaces/{ns}/httproutes",
}
# Kinds whose CRDs come with other projects (KEDA, its HTTP add-on, Gateway API).
THIRD_PARTY_KINDS = (
    ("keda.sh/v1alpha1", "scaledobjects", "ScaledObject"),
    ("http.keda.sh/v1alpha1", "httpscaledobjects", "HTTPScaledObject"),
    ("gateway.networking.k8s.io/v1", "httproutes", "HTTPRoute"),
)
WAIT = 20.0
# How the operator is started, as the chart starts it (a test holds the two together).
OPERATOR_ARGS = ["run", "-m", "modelplane_operator.handlers", "--standalone", "--all-namespaces"]


def wait_for(check: Callable[[], T | None], what: str, timeout: float = WAIT) -> T:
    """Poll until ``check`` returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def wait_until_watching(plural: str, since: int) -> None:
    """Wait for kopf's watch on ``plural`` (ACCESS_LOG entries from index ``since`` on).

    kopf lists before it watches: an object created before the watch is resumed,
    one created after it is created, and scenarios mean the second.
    """
    wait_for(
        lambda: any(a.watch and a.path.endswith(f"/{plural}") for a in ACCESS_LOG[since:]),
        f"the operator to watch {plural}",
    )


class Cluster:
    """The emulated API server, spoken to over HTTP like any client would."""

    def __init__(self, emulator: EmulatorThread) -> None:
        self.emulator = emulator
        self.http = requests.Session()

    def url(self, plural: str, namespace: str, name: str = "", sub: str = "") -> str:
        path = PATHS[plural].format(ns=namespace)
        return self.emulator.url + path + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")

    def create(self, plural: str, obj: dict[str, Any]) -> dict[str, Any]:
        response = self.http.post(
            self.url(plural, obj["metadata"]["namespace"]), json=obj, timeout=10
        )
        assert response.status_code < 300, response.text
        created: dict[str, Any] = response.json()
        return created

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        response = self.http.get(self.url(plural, namespace, name), timeout=10)
        if response.status_code == 404:
            return None
        assert response.status_code == 200, response.text
        found: dict[str, Any] = response.json()
        return found

    def patch(
        self,
        plural: str,
        namespace: str,
        name: str,
        patch: dict[str, Any],
        *,
        sub: str = "",
        manager: str = "test",
    ) -> dict[str, Any]:
        response = self.http.patch(
            self.url(plural, namespace, name, sub),
            json=patch,
            timeout=10,
            params={"fieldManager": manager},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert response.status_code == 200, response.text
        patched: dict[str, Any] = response.json()
        return patched

    def delete(self, plural: str, namespace: str, name: str) -> None:
        response = self.http.delete(self.url(plural, namespace, name), timeout=10)
        assert response.status_code == 200, response.text

    def list(self, plural: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.emulator.run(self.emulator.emulator.all_of, plural)
        return found

    def mutations(self) -> int:
        return len(self.emulator.emulator.mutations)

    def play_deployment_controller(self, namespace: str, name: str) -> None:
        """Report every replica of the current generation available, as the controller would."""
        deployment = wait_for(lambda: self.get("deployments", namespace, name), "the Deployment")
        replicas = deployment["spec"].get("replicas", 1)
        self.patch(
            "deployments",
            namespace,
            name,
            {
                "status": {
                    "observedGeneration": deployment["metadata"]["generation"],
                    "replicas": replicas,
                    "updatedReplicas": replicas,
                    "readyReplicas": replicas,
                    "availableReplicas": replicas,
                    "conditions": [
                        {
                            "type": "Available",
                            "status": "True",
                            "reason": "MinimumReplicasAvailable",
                        },
                        {
                            "type": "Progressing",
                            "status": "True",
                            "reason": "NewReplicaSetAvailable",
                        },
                    ],
                }
            },
            sub="status",
            manager="kube-controller-manager",
        )


def observed_generation(md: dict[str, Any] | None) -> int | None:
    generation: int | None = (md or {}).get("status", {}).get("observedGeneration")
    return generation


def condition(md: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    for found in (md or {}).get("status", {}).get("conditions", []):
        if found["type"] == kind:
            result: dict[str, Any] = found
            return result
    return {}


def write_kubeconfig(path: Path, server: str) -> Path:
    """A kubeconfig pointing at the emulator (no TLS, a dummy token)."""
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: emulator\n"
        f"clusters: [{{name: emulator, cluster: {{server: '{server}'}}}}]\n"
        "users: [{name: tester, user: {token: test-token}}]\n"
        "contexts: [{name: emulator, context: {cluster: emulator, user: tester}}]\n"
    )
    return path


@contextmanager
def running_operator(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    emulator: EmulatorThread,
    args: list[str] | None = None,
) -> Iterator[KopfRunner]:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", emulator.url)
    monkeypatch.setenv("MODELPLANE_OPERATOR_CONFLICT_RETRY_SECONDS", "2")
    with kopf_operator(kubeconfig, monkeypatch, args, timeout=60) as runner:
        yield runner


@contextmanager
def kopf_operator(
    kubeconfig: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str] | None = None,
    *,
    timeout: float,
) -> Iterator[KopfRunner]:
    """The operator in this process, talking to the API server ``kubeconfig`` names, with
    no metrics port and a pass over the consumers every 2 s; it must stop cleanly."""
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("MODELPLANE_OPERATOR_METRICS_PORT", "0")
    monkeypatch.setenv("MODELPLANE_OPERATOR_KEY_RECHECK_SECONDS", "2")
    with KopfRunner(args or OPERATOR_ARGS, timeout=timeout) as runner:
        yield runner
    assert runner.exception is None, runner.output
    assert runner.exit_code == 0, runner.output


def serve_crd(emulator: EmulatorThread) -> None:
    """Install the CRDs: the API server starts serving the kinds."""
    emulator.emulator.serve("modelplane.io/v1alpha1", "modeldeployments", "ModelDeployment")
    emulator.emulator.serve("modelplane.io/v1alpha1", "modelconsumers", "ModelConsumer")


def start_emulator(*, with_crd: bool = True, third_party: bool = True) -> EmulatorThread:
    """An emulated API server serving the built-in kinds the operator uses, its CRDs
    (``with_crd``) and the third-party kinds it renders (``third_party``)."""
    emulator = EmulatorThread()
    api = emulator.emulator
    if with_crd:
        serve_crd(emulator)
    if third_party:
        for api_version, plural, kind in THIRD_PARTY_KINDS:
            api.serve(api_version, plural, kind)
    api.serve("apps/v1", "deployments", "Deployment")
    api.serve("v1", "services", "Service")
    api.serve("autoscaling/v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler")
    api.serve("policy/v1", "poddisruptionbudgets", "PodDisruptionBudget")
    api.serve("v1", "pods", "Pod")
    api.serve("v1", "configmaps", "ConfigMap", status=False)
    api.serve("v1", "secrets", "Secret", status=False)
    api.serve("v1", "events", "Event", status=False)
    api.serve("v1", "namespaces", "Namespace", namespaced=False)
    return emulator


def serve_install_kinds(emulator: EmulatorThread) -> None:
    """The kinds install.yaml holds beyond the operator's own: CRDs, accounts, RBAC."""
    api = emulator.emulator
    api.serve(
        "apiextensions.k8s.io/v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        namespaced=False,
    )
    api.serve("v1", "serviceaccounts", "ServiceAccount", status=False)
    for kind, namespaced in (
        ("ClusterRole", False),
        ("ClusterRoleBinding", False),
        ("Role", True),
        ("RoleBinding", True),
    ):
        plural = kind.lower() + "s"
        api.serve("rbac.authorization.k8s.io/v1", plural, kind, namespaced=namespaced, status=False)
