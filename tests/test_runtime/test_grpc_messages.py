"""The gRPC messages the runtime builds at import are KServe's V2 messages on the wire: held
against Triton's generated ones (tritonclient's grpc_service.proto, a superset of KServe's
grpc_predict_v2.proto), and the request and response mappings, without a server."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from google.protobuf.descriptor import Descriptor
from tritonclient.grpc import service_pb2 as triton

from modelplane_runtime import grpc_protocol as ours
from modelplane_runtime.errors import BadRequest
from modelplane_runtime.grpc_protocol import (
    ModelInferRequest,
    ModelInferResponse,
    inference_request,
    inference_response,
    model_name_of,
)
from modelplane_runtime.protocol import (
    DATATYPES,
    InferenceRequest,
    RequestInput,
    tensor_from_wire,
    unchecked,
)

MESSAGES = [
    "ServerLiveResponse",
    "ServerReadyResponse",
    "ModelReadyRequest",
    "ModelReadyResponse",
    "ServerMetadataResponse",
    "ModelMetadataRequest",
    "ModelMetadataResponse",
    "ModelInferRequest",
    "ModelInferResponse",
    "InferTensorContents",
]


def _fields(descriptor: Descriptor) -> dict[int, tuple[str, int, bool, str]]:
    """number -> (name, type, repeated, message type's name), nested messages included."""
    found: dict[int, tuple[str, int, bool, str]] = {}
    for field in descriptor.fields:
        kind = field.message_type.name if field.message_type is not None else ""
        found[field.number] = (field.name, field.type, field.is_repeated, kind)
    return found


def _walk(descriptor: Descriptor, path: str = "") -> dict[str, Descriptor]:
    here = {path + descriptor.name: descriptor}
    for nested in descriptor.nested_types:
        here |= _walk(nested, path + descriptor.name + ".")
    return here


@pytest.mark.parametrize("name", MESSAGES)
def test_every_field_is_tritons_by_number_name_and_type(name: str) -> None:
    mine = _walk(getattr(ours, name).DESCRIPTOR)
    theirs = _walk(getattr(triton, name).DESCRIPTOR)
    assert set(mine) <= set(theirs)
    for path, descriptor in mine.items():
        expected = _fields(theirs[path])
        for number, field in _fields(descriptor).items():
            assert expected.get(number) == field, f"{path} field {number}"
        assert descriptor.GetOptions().map_entry == theirs[path].GetOptions().map_entry


def test_the_parameter_choice_is_a_oneof_as_in_the_spec() -> None:
    entry = ours.ModelInferRequest.DESCRIPTOR.nested_types_by_name["ParametersEntry"]
    parameter = entry.fields_by_name["value"]
    choice = parameter.message_type.oneofs_by_name["parameter_choice"]
    assert [f.name for f in choice.fields] == ["bool_param", "int64_param", "string_param"]


def _tritons_request() -> Any:
    request = triton.ModelInferRequest(
        model_name="relu", model_version="1", id="req-7", raw_input_contents=[b"\0" * 16]
    )
    request.parameters["priority"].int64_param = 3
    request.parameters["tag"].string_param = "a"
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    tensor.parameters["flag"].bool_param = True
    request.outputs.add(name="double")
    return request


def test_a_request_from_tritons_client_reads_back_field_for_field() -> None:
    sent = _tritons_request()
    received = ModelInferRequest.FromString(sent.SerializeToString())
    assert received.model_name == "relu"
    assert received.id == "req-7"
    assert received.parameters["priority"].int64_param == 3
    assert received.inputs[0].parameters["flag"].bool_param is True
    assert list(received.inputs[0].shape) == [1, 4]
    assert received.outputs[0].name == "double"
    back = triton.ModelInferRequest.FromString(received.SerializeToString())
    assert back == sent


def test_the_model_name_is_read_off_the_front_of_the_message() -> None:
    wire = _tritons_request().SerializeToString()
    assert model_name_of(wire) == "relu"
    long_name = "m" * 300  # a length of two varint bytes
    assert model_name_of(triton.ModelInferRequest(model_name=long_name).SerializeToString()) == (
        long_name
    )
    # Not first, cut short, not text, an endless varint: left to the parser.
    assert model_name_of(triton.ModelInferRequest(id="x").SerializeToString()) is None
    assert model_name_of(wire[:4]) is None
    assert model_name_of(b"\x0a\x02\xff\xfe") is None
    assert model_name_of(b"\x0a" + b"\xff" * 20) is None
    assert model_name_of(b"") is None


def _typed(datatype: str, values: list[Any], shape: list[int]) -> Any:
    request = ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="x", datatype=datatype, shape=shape)
    getattr(tensor.contents, ours.CONTENTS_FIELD[datatype]).extend(values)
    return request


@pytest.mark.parametrize("datatype", sorted(ours.CONTENTS_FIELD))
def test_typed_contents_become_the_bytes_raw_contents_would_be(datatype: str) -> None:
    dtype = DATATYPES[datatype]
    if datatype == "BYTES":
        values: list[Any] = [b"ab", "é".encode(), b""]
    elif datatype == "BOOL":
        values = [True, False, True]
    else:
        info = np.iinfo(dtype) if dtype.kind in "iu" else np.finfo(dtype)
        values = [dtype.type(info.min).item(), 0, dtype.type(info.max).item()]
    (item,) = inference_request(_typed(datatype, values, [1, 3])).inputs
    if datatype == "BYTES":
        expected = b"".join(len(v).to_bytes(4, "little") + v for v in values)
    else:
        expected = np.asarray(values, dtype=dtype.newbyteorder("<")).tobytes()
    assert bytes(item._binary or b"") == expected


@pytest.mark.parametrize(
    ("request_", "words"),
    [
        (_typed("INT8", [1, 200, 3], [3]), "element 1 of int_contents is 200, outside INT8"),
        (_typed("UINT16", [70000], [1]), "element 0 of uint_contents is 70000, outside UINT16"),
        (_typed("FP32", [1.0, 2.0], [1, 3]), "2 values in fp32_contents but shape [1, 3] needs 3"),
        (_typed("INT32", [1], [1]), None),
    ],
)
def test_typed_contents_that_do_not_fit_are_refused_naming_the_input(
    request_: Any, words: str | None
) -> None:
    if words is None:
        inference_request(request_)
        return
    with pytest.raises(BadRequest, match="input 'x'") as refused:
        inference_request(request_)
    assert words in refused.value.message


def test_contents_in_the_wrong_field_or_without_a_field_are_refused() -> None:
    wrong = _typed("INT32", [1, 2], [2])
    wrong.inputs[0].datatype = "FP32"
    with pytest.raises(BadRequest, match="FP32 but carries int_contents; FP32 goes in fp32"):
        inference_request(wrong)
    half = ModelInferRequest(model_name="m")
    half.inputs.add(name="x", datatype="FP16", shape=[1])
    with pytest.raises(BadRequest, match=r"FP16 has no typed contents .* raw_input_contents"):
        inference_request(half)
    brain = ModelInferRequest(model_name="m")
    brain.inputs.add(name="x", datatype="BF16", shape=[1])
    with pytest.raises(BadRequest, match="datatype 'BF16' is not one this server serves"):
        inference_request(brain)


def test_raw_contents_must_match_the_inputs_one_for_one() -> None:
    request = ModelInferRequest(model_name="m", raw_input_contents=[b"\0" * 4, b"\0" * 4])
    request.inputs.add(name="x", datatype="FP32", shape=[1])
    with pytest.raises(BadRequest, match="1 inputs but 2 raw_input_contents"):
        inference_request(request)
    mixed = _typed("FP32", [1.0], [1])
    mixed.raw_input_contents.append(b"\0" * 4)
    with pytest.raises(BadRequest, match="typed contents beside raw_input_contents"):
        inference_request(mixed)
    with pytest.raises(BadRequest, match="no inputs"):
        inference_request(ModelInferRequest(model_name="m"))


def test_answers_are_raw_when_asked_or_when_an_output_has_no_typed_field() -> None:
    floats = np.arange(6, dtype=np.float32).reshape(2, 3)
    half = floats.astype(np.float16)
    strings = np.array([["a", "é"]], dtype=object)

    typed = ModelInferResponse.FromString(
        inference_response("m", "id-1", {"f": floats, "s": strings}, raw=False)
    )
    assert typed.id == "id-1"
    assert not typed.raw_output_contents
    assert list(typed.outputs[0].contents.fp32_contents) == floats.ravel().tolist()
    assert list(typed.outputs[0].shape) == [2, 3]
    assert list(typed.outputs[1].contents.bytes_contents) == [b"a", "é".encode()]

    forced = ModelInferResponse.FromString(
        inference_response("m", None, {"f": floats, "h": half}, raw=False)
    )
    assert forced.raw_output_contents == [floats.tobytes(), half.tobytes()]
    assert [o.datatype for o in forced.outputs] == ["FP32", "FP16"]
    assert not forced.outputs[0].HasField("contents")


ROUND_TRIP = """
import numpy as np
from google.protobuf.internal import api_implementation
from modelplane_runtime import grpc_protocol as g

assert api_implementation.Type() == "{implementation}", api_implementation.Type()
request = g.ModelInferRequest(model_name="m", raw_input_contents=[b"8 bytes!"])
request.inputs.append(g.InferInputTensor(name="x", datatype="FP32", shape=[1, 2]))
(item,) = g.inference_request(g.ModelInferRequest.FromString(request.SerializeToString())).inputs
assert bytes(item._binary) == b"8 bytes!"
answer = g.inference_response("m", "i", {{"y": np.ones((1, 2), np.float32)}}, raw=False)
assert list(g.ModelInferResponse.FromString(answer).outputs[0].contents.fp32_contents) == [1, 1]
spec = {{"name": "x", "datatype": "FP32", "shape": [-1, 2]}}
metadata = {{"name": "m", "versions": ["1"], "platform": "p", "inputs": [spec], "outputs": []}}
assert g.ModelMetadataResponse.FromString(g.model_metadata(metadata)).inputs[0].shape == [-1, 2]
"""


@pytest.mark.parametrize("implementation", ["upb", "python"])
def test_the_messages_work_in_either_protobuf_implementation(implementation: str) -> None:
    """onnxruntime-extensions, once imported, selects the pure-Python one for the process
    and those it starts (its cvt module sets PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION)."""
    run = subprocess.run(
        [sys.executable, "-c", ROUND_TRIP.format(implementation=implementation)],
        env={**os.environ, "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": implementation},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr


def test_requests_built_unchecked_are_what_model_construct_builds() -> None:
    """A pydantic upgrade that changes what model_construct leaves behind shows here."""
    data = memoryview(b"\0" * 16)
    built = unchecked(
        RequestInput,
        {"name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": None, "data": None},
        {"_binary": data},
    )
    constructed = RequestInput.model_construct(
        name="x", shape=[1, 4], datatype="FP32", parameters=None, data=None
    )
    constructed._binary = data
    assert built == constructed
    assert built.model_fields_set == constructed.model_fields_set
    assert built._binary is data
    assert tensor_from_wire(built, DATATYPES["FP32"]).tolist() == [[0, 0, 0, 0]]
    request = unchecked(
        InferenceRequest, {"id": "a", "parameters": None, "inputs": [built], "outputs": None}
    )
    assert request == InferenceRequest.model_construct(
        id="a", parameters=None, inputs=[constructed], outputs=None
    )
    assert request.model_dump() == {
        "id": "a",
        "parameters": None,
        "inputs": [built.model_dump()],
        "outputs": None,
    }
