"""Off-the-shelf OIP clients work unchanged: tritonclient's HTTP client, in its
default binary-tensor mode and in plain JSON."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton

from modelplane_testkit.runtime_server import RuntimeServer


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient(relu_server: RuntimeServer, models: dict[str, Path], binary: bool) -> None:
    client = triton.InferenceServerClient(url=relu_server.url.removeprefix("http://"))
    try:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready("relu")
        metadata = client.get_model_metadata("relu")
        assert metadata["inputs"][0] == {"name": "x", "datatype": "FP32", "shape": [-1, 4]}

        x = np.random.default_rng(2).standard_normal((5, 4)).astype(np.float32)
        tensor = triton.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        result = client.infer(
            "relu",
            [tensor],
            request_id="t-1",
            outputs=[triton.InferRequestedOutput("double", binary_data=binary)],
        )
    finally:
        client.close()
    (want_relu, want_double) = ort.InferenceSession(str(models["relu"])).run(None, {"x": x})
    del want_relu
    assert result.get_response()["id"] == "t-1"
    assert result.as_numpy("relu") is None  # not requested
    np.testing.assert_array_equal(result.as_numpy("double"), want_double)


def test_binary_body_that_does_not_add_up_is_a_400(relu_server: RuntimeServer) -> None:
    header = (
        b'{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32",'
        b'"parameters":{"binary_data_size":16}}]}'
    )
    for tail, words in ((b"\0" * 8, "runs past the body"), (b"\0" * 20, "belong to no input")):
        response = relu_server.post(
            "/v2/models/relu/infer",
            data=header + tail,
            headers={"Inference-Header-Content-Length": str(len(header))},
        )
        assert response.status_code == 400
        assert words in response.json()["error"]
    wrong_size = header.replace(b"16", b"12")
    response = relu_server.post(
        "/v2/models/relu/infer",
        data=wrong_size + b"\0" * 12,
        headers={"Inference-Header-Content-Length": str(len(wrong_size))},
    )
    assert response.status_code == 400
    assert "needs 16" in response.json()["error"]
