"""spec.model.copyToPod: a pvc:// or file:// model copied, verified, into the pod's own
volume by the fetch container; the serving container never sees the source."""

from __future__ import annotations

from typing import Any

import pytest

from modelplane_api.spec import InvalidSpecError, parse_model_deployment
from modelplane_operator.config import OperatorConfig
from modelplane_operator.render import render_children
from modelplane_testkit.crd_validation import validate_against_crd
from test_operator.samples import minimal

CONFIG = OperatorConfig.model_construct()
DIGEST = "a" * 64


def _pod(model: dict[str, Any]) -> dict[str, Any]:
    md = parse_model_deployment(minimal(model=model))
    (deployment,) = (o for o in render_children(md, CONFIG) if o["kind"] == "Deployment")
    pod: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return pod


def test_a_pvc_model_copied_into_the_pod_is_read_by_the_fetch_container_only() -> None:
    pod = _pod({"uri": "pvc://weights/forecaster/", "sha256": DIGEST, "copyToPod": True})
    (fetch,) = pod["initContainers"]
    command = fetch["command"]
    source = command.index("file:///mnt/model-source/forecaster/")
    assert command[source + 1 : source + 4] == ["/mnt/models/model", "--sha256", DIGEST]
    mount = {"name": "model-source", "mountPath": "/mnt/model-source", "readOnly": True}
    assert mount in fetch["volumeMounts"]
    (runtime,) = pod["containers"]
    assert all(m["name"] != "model-source" for m in runtime["volumeMounts"])
    env = {e["name"]: e["value"] for e in runtime["env"]}
    assert env["MODELPLANE_MODEL_PATH"] == "/mnt/models/model"
    assert "MODELPLANE_MODEL_SHA256" not in env  # verified by the fetch, as it copied
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes["model"]  # the pod's own volume
    claim = {"claimName": "weights", "readOnly": True}
    assert volumes["model-source"] == {"name": "model-source", "persistentVolumeClaim": claim}


def test_a_file_model_copied_into_the_pod_and_the_default_read_in_place() -> None:
    pod = _pod({"uri": "file:///models/m.onnx", "sha256": DIGEST, "copyToPod": True})
    (fetch,) = pod["initContainers"]
    assert "file:///models/m.onnx" in fetch["command"]
    assert "/mnt/models/model.onnx" in fetch["command"]
    in_place = _pod({"uri": "pvc://weights/forecaster/", "sha256": DIGEST})
    assert "initContainers" not in in_place
    assert {v["name"] for v in in_place["volumes"]} >= {"model"}
    assert "model-source" not in {v["name"] for v in in_place["volumes"]}


def test_copy_to_pod_is_refused_for_a_fetched_model_by_pydantic_and_the_crd() -> None:
    obj = minimal(model={"uri": "s3://b/m.onnx", "copyToPod": True})
    with pytest.raises(InvalidSpecError, match="copyToPod is for a pvc:// or file:// model"):
        parse_model_deployment(obj)
    assert any("copyToPod is for a pvc://" in p for p in validate_against_crd(obj))
