"""Failures on a real node reach the ModelDeployment's status with their real cause: what the
fetch init container and the runtime said as they exited (their termination messages), what
the kernel did (OOMKilled), what containerd could not pull."""

from __future__ import annotations

import hashlib
import time

import pytest

from modelplane_testkit.real_cluster import RealCluster
from test_node.conftest import MODEL_PORT, Obj, Report, namespace, serve_files, wait_for
from test_node.test_serving_on_node import condition, model_deployment

NS = "failures"


@pytest.fixture(scope="module")
def files(admin: RealCluster, operator_pod: Obj, tiny_model: bytes) -> str:
    namespace(admin, NS)
    return serve_files(
        admin, NS, {"model.onnx": tiny_model, "broken.onnx": b"this is not an onnx graph"}
    )


def _reason(
    admin: RealCluster, report: Report, name: str, reasons: set[str], timeout: float = 240
) -> Obj:
    created = time.monotonic()

    def with_reason() -> Obj | None:
        ready = condition(admin.get("modeldeployments", NS, name), "Ready")
        return ready if ready.get("reason") in reasons else None

    ready = wait_for(with_reason, f"{name}: Ready reason in {sorted(reasons)}", timeout=timeout)
    said = f"{ready['reason']} after {time.monotonic() - created:.0f}s: {ready['message'][:160]}"
    report.add(f"failure: {name}", said)
    return ready


def _create(admin: RealCluster, md: Obj) -> None:
    md["spec"]["access"] = {"mode": "Open"}
    admin.create("modeldeployments", md)


def test_a_model_uri_that_404s(admin: RealCluster, files: str, report: Report) -> None:
    _create(admin, model_deployment(NS, "missing", f"http://{files}:{MODEL_PORT}/missing.onnx"))
    ready = _reason(admin, report, "missing", {"ModelFetchFailed"})
    assert "404" in ready["message"], ready


# The stall takes ~313 s to report (five attempts), over the suite's 300 s default.
@pytest.mark.timeout(450)
def test_a_model_uri_that_never_answers(admin: RealCluster, files: str, report: Report) -> None:
    _create(admin, model_deployment(NS, "silent", f"http://{files}:8001/model.onnx"))
    ready = _reason(admin, report, "silent", {"FetchStalled", "Retrying", "ModelFetchFailed"}, 400)
    assert "stall" in ready["message"].lower() or "timed out" in ready["message"], ready


def test_a_wrong_digest(admin: RealCluster, files: str, report: Report, tiny_model: bytes) -> None:
    wrong = hashlib.sha256(b"another model").hexdigest()
    _create(
        admin, model_deployment(NS, "tampered", f"http://{files}:{MODEL_PORT}/model.onnx", wrong)
    )
    ready = _reason(admin, report, "tampered", {"ModelFetchFailed"})
    assert "sha256" in ready["message"], ready


def test_a_graph_onnxruntime_refuses(admin: RealCluster, files: str, report: Report) -> None:
    digest = hashlib.sha256(b"this is not an onnx graph").hexdigest()
    _create(
        admin, model_deployment(NS, "broken", f"http://{files}:{MODEL_PORT}/broken.onnx", digest)
    )
    ready = _reason(admin, report, "broken", {"ModelLoadFailed"})
    assert "broken.onnx" in ready["message"] or "model" in ready["message"], ready


def test_a_memory_limit_too_small(admin: RealCluster, files: str, report: Report) -> None:
    md = model_deployment(NS, "cramped", f"http://{files}:{MODEL_PORT}/model.onnx")
    md["spec"]["resources"] = {
        "requests": {"cpu": "100m", "memory": "40Mi"},
        "limits": {"memory": "40Mi"},
    }
    _create(admin, md)
    ready = _reason(admin, report, "cramped", {"OOMKilled"})
    assert "spec.resources.limits.memory" in ready["message"], ready


def test_an_image_that_does_not_exist(admin: RealCluster, files: str, report: Report) -> None:
    md = model_deployment(NS, "no-image", f"http://{files}:{MODEL_PORT}/model.onnx")
    md["spec"]["runtime"] = {"image": "registry.invalid/modelplane/no-such-runtime:0"}
    _create(admin, md)
    ready = _reason(admin, report, "no-image", {"ErrImagePull", "ImagePullBackOff"})
    assert "no-such-runtime" in ready["message"], ready
    stalled = condition(admin.get("modeldeployments", NS, "no-image"), "Stalled")
    assert stalled["status"] == "True", stalled
