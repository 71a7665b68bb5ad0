"""Plays the kubelet for a control plane that has none: Nodes, and pod status.

Nodes are registered with cpu, memory and (for GPU nodes) ``nvidia.com/gpu``
capacity and the GPU taint. Once the real scheduler binds a runtime pod, its
status is written through ``pods/status`` as a kubelet would: the fetch init
container completed and the runtime Running and Ready, or (per namespace) the
fetch failing with the fetch command's own last line. A pod being deleted is
removed once its grace period starts, as a kubelet does when its containers stop.
"""

from __future__ import annotations

import datetime
import threading
from typing import Any

from modelplane_testkit.control_plane import ApiServer

Obj = dict[str, Any]
GPU_RESOURCE = "nvidia.com/gpu"
RUNTIME_PODS = "app.kubernetes.io/name=modelplane-runtime"
FETCH_FAILURE = "error: cannot fetch 's3://models/missing.onnx': FileNotFoundError: NoSuchKey"
LOAD_FAILURE = "onnxruntime cannot load /mnt/models/model.onnx: INVALID_PROTOBUF"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class KubeletPlayer:
    def __init__(self, server: ApiServer) -> None:
        self.http = server.session()
        self.base = server.server
        self.fetch_fails: set[str] = set()  # namespaces whose pods' model fetch fails
        self.load_fails: set[str] = set()  # namespaces whose runtime cannot load the model
        self._played: dict[str, str] = {}  # pod uid -> what was written
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="kubelet-player")

    # --- nodes ------------------------------------------------------------------------

    def register_node(self, name: str, *, gpus: int = 0) -> None:
        capacity = {"cpu": "16", "memory": "64Gi", "pods": "110", "ephemeral-storage": "100Gi"}
        node: Obj = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": {},
        }
        if gpus:
            capacity[GPU_RESOURCE] = str(gpus)
            node["metadata"]["labels"]["modelplane.io/test-gpu"] = "true"
        response = self.http.post(f"{self.base}/api/v1/nodes", json=node, timeout=10)
        assert response.status_code in {201, 409}, response.text
        # Admission tainted it not-ready; with no node lifecycle controller, untaint it here.
        taints = [{"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}] if gpus else []
        self._patch(f"/api/v1/nodes/{name}", {"spec": {"taints": taints or None}})
        ready = {
            "type": "Ready",
            "status": "True",
            "reason": "KubeletReady",
            "message": "played by the test",
            "lastHeartbeatTime": _now(),
            "lastTransitionTime": _now(),
        }
        self._patch(
            f"/api/v1/nodes/{name}/status",
            {"status": {"capacity": capacity, "allocatable": capacity, "conditions": [ready]}},
        )

    def _patch(self, path: str, body: Obj) -> None:
        response = self.http.patch(
            self.base + path,
            json=body,
            timeout=10,
            headers={"Content-Type": "application/merge-patch+json"},
            params={"fieldManager": "kubelet-player"},
        )
        assert response.status_code == 200, response.text

    # --- pods -------------------------------------------------------------------------

    def __enter__(self) -> KubeletPlayer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(0.3):
            try:
                self._play_once()
            except Exception:  # noqa: BLE001 - a passing API error: try again next round
                continue

    def _play_once(self) -> None:
        response = self.http.get(
            f"{self.base}/api/v1/pods", params={"labelSelector": RUNTIME_PODS}, timeout=10
        )
        for pod in response.json().get("items", []):
            meta, spec = pod["metadata"], pod["spec"]
            if meta.get("deletionTimestamp"):
                # The containers have stopped: a kubelet confirms with a zero-grace delete.
                self.http.delete(
                    f"{self.base}/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                    json={"gracePeriodSeconds": 0},
                    timeout=10,
                )
                continue
            if not spec.get("nodeName"):
                continue
            behaviour = "runs"
            if meta["namespace"] in self.fetch_fails:
                behaviour = "fetch-fails"
            elif meta["namespace"] in self.load_fails:
                behaviour = "load-fails"
            if self._played.get(meta["uid"]) == behaviour:
                continue
            status = {
                "fetch-fails": self._failing,
                "load-fails": self._not_loading,
                "runs": self._running,
            }[behaviour](pod)
            self._patch(
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status", status
            )
            self._played[meta["uid"]] = behaviour

    def _running(self, pod: Obj) -> Obj:
        now = _now()
        return {
            "status": {
                "phase": "Running",
                "hostIP": "127.0.0.1",
                "podIP": "127.0.0.1",
                "startTime": now,
                "conditions": [
                    {"type": kind, "status": "True", "lastTransitionTime": now}
                    for kind in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
                ],
                "initContainerStatuses": [
                    {
                        "name": c["name"],
                        "image": c["image"],
                        "imageID": "",
                        "ready": True,
                        "restartCount": 0,
                        "state": {
                            "terminated": {"exitCode": 0, "reason": "Completed", "finishedAt": now}
                        },
                    }
                    for c in pod["spec"].get("initContainers", [])
                ],
                "containerStatuses": [
                    {
                        "name": c["name"],
                        "image": c["image"],
                        "imageID": "",
                        "ready": True,
                        "started": True,
                        "restartCount": 0,
                        "state": {"running": {"startedAt": now}},
                    }
                    for c in pod["spec"]["containers"]
                ],
            }
        }

    def _not_loading(self, pod: Obj) -> Obj:
        """The fetch succeeded; the runtime exits as it does when the model cannot load,
        its reason in its termination message (what the kubelet copies from the file)."""
        status = self._running(pod)["status"]
        status["conditions"] = [
            {
                "type": kind,
                "status": "True" if kind in {"PodScheduled", "Initialized"} else "False",
                "lastTransitionTime": _now(),
            }
            for kind in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
        ]
        for container in status["containerStatuses"]:
            container.update(
                ready=False,
                started=False,
                restartCount=2,
                state={"waiting": {"reason": "CrashLoopBackOff"}},
                lastState={
                    "terminated": {
                        "exitCode": 1,
                        "reason": "Error",
                        "message": f"ModelLoadFailed: {LOAD_FAILURE}",
                        "finishedAt": _now(),
                    }
                },
            )
        return {"status": status}

    def _failing(self, pod: Obj) -> Obj:
        now = _now()
        return {
            "status": {
                "phase": "Pending",
                "startTime": now,
                "conditions": [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                    {
                        "type": "Initialized",
                        "status": "False",
                        "reason": "ContainersNotInitialized",
                        "lastTransitionTime": now,
                    },
                ],
                "initContainerStatuses": [
                    {
                        "name": c["name"],
                        "image": c["image"],
                        "imageID": "",
                        "ready": False,
                        "restartCount": 3,
                        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                        "lastState": {
                            "terminated": {
                                "exitCode": 1,
                                "reason": "Error",
                                "message": FETCH_FAILURE,
                                "finishedAt": now,
                            }
                        },
                    }
                    for c in pod["spec"].get("initContainers", [])
                ],
            }
        }
