"""A small REST client for a real API server, shaped like the emulator tests' ``Cluster``."""

from __future__ import annotations

from typing import Any

import requests

from modelplane_testkit.control_plane import ApiServer

Obj = dict[str, Any]
PATHS = {
    "modeldeployments": "/apis/modelplane.io/v1alpha1/namespaces/{ns}/modeldeployments",
    "deployments": "/apis/apps/v1/namespaces/{ns}/deployments",
    "replicasets": "/apis/apps/v1/namespaces/{ns}/replicasets",
    "services": "/api/v1/namespaces/{ns}/services",
    "horizontalpodautoscalers": "/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers",
    "poddisruptionbudgets": "/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets",
    "pods": "/api/v1/namespaces/{ns}/pods",
    "events": "/api/v1/namespaces/{ns}/events",
    "modelconsumers": "/apis/modelplane.io/v1alpha1/namespaces/{ns}/modelconsumers",
    "configmaps": "/api/v1/namespaces/{ns}/configmaps",
    "secrets": "/api/v1/namespaces/{ns}/secrets",
    "serviceaccounts": "/api/v1/namespaces/{ns}/serviceaccounts",
}


class ApiRefused(AssertionError):
    def __init__(self, status: int, body: Obj) -> None:
        super().__init__(f"{status}: {body.get('message', body)}")
        self.status = status
        self.body = body


class RealCluster:
    def __init__(self, server: ApiServer, token: str | None = None) -> None:
        self.server = server
        self.http: requests.Session = server.session(token)

    def url(self, plural: str, namespace: str, name: str = "", sub: str = "") -> str:
        path = PATHS[plural].format(ns=namespace)
        return self.server.server + path + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")

    def _answer(self, response: requests.Response) -> Obj:
        body: Obj = response.json() if response.content else {}
        if response.status_code >= 300:
            raise ApiRefused(response.status_code, body)
        return body

    def namespace(self, name: str, labels: dict[str, str] | None = None) -> None:
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        if labels:
            body["metadata"]["labels"] = labels  # type: ignore[index]
        response = self.http.post(f"{self.server.server}/api/v1/namespaces", json=body, timeout=10)
        if response.status_code != 409:
            self._answer(response)

    def create(self, plural: str, obj: Obj) -> Obj:
        namespace = obj["metadata"]["namespace"]
        # Strict, as kubectl asks: unknown fields are refused, not dropped with a warning.
        response = self.http.post(
            self.url(plural, namespace), json=obj, timeout=10, params={"fieldValidation": "Strict"}
        )
        return self._answer(response)

    def get(self, plural: str, namespace: str, name: str, sub: str = "") -> Obj | None:
        response = self.http.get(self.url(plural, namespace, name, sub), timeout=10)
        if response.status_code == 404:
            return None
        return self._answer(response)

    def list(self, plural: str, namespace: str) -> list[Obj]:
        items: list[Obj] = self._answer(self.http.get(self.url(plural, namespace), timeout=10))[
            "items"
        ]
        return items

    def patch(
        self,
        plural: str,
        namespace: str,
        name: str,
        patch: Obj,
        *,
        sub: str = "",
        manager: str = "e2e-test",
        content_type: str = "application/merge-patch+json",
    ) -> Obj:
        return self._answer(
            self.http.patch(
                self.url(plural, namespace, name, sub),
                json=patch,
                timeout=10,
                params={"fieldManager": manager},
                headers={"Content-Type": content_type},
            )
        )

    def delete(self, plural: str, namespace: str, name: str) -> None:
        response = self.http.delete(self.url(plural, namespace, name), timeout=10)
        if response.status_code != 404:
            self._answer(response)
