"""The Open Inference Protocol (KServe V2) gRPC wire format: its messages, and tensors to and
from them.

The messages are KServe's ``grpc_predict_v2.proto`` (package ``inference``), declared below
field by field from the published spec and built at import with protobuf's descriptor API:
no generated code is committed, no ``protoc`` runs at build time, and the runtime needs only
``protobuf`` (which grpcio's users have anyway). They live in a descriptor pool of their own,
so that a client library in the same process (tritonclient registers the same names in the
default pool) cannot clash with them. Field numbers and types are the wire contract; Triton's
``grpc_service.proto`` is a superset of this one, which is why its clients work unchanged.

A request's tensors become the same :class:`~modelplane_runtime.protocol.InferenceRequest`
the REST route builds: raw contents as the input's binary data (checked like the binary
tensor extension's), typed contents packed into those same little-endian bytes first.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from modelplane_runtime.errors import BadRequest
from modelplane_runtime.protocol import (
    DATATYPE_OF,
    DATATYPES,
    InferenceRequest,
    RequestInput,
    RequestOutput,
    string_elements,
    strings_to_bytes,
    unchecked,
)

PACKAGE = "inference"
SERVICE = f"{PACKAGE}.GRPCInferenceService"

# --- the messages, as the spec declares them -------------------------------------------------

_Field = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "bool": _Field.TYPE_BOOL,
    "int32": _Field.TYPE_INT32,
    "int64": _Field.TYPE_INT64,
    "uint32": _Field.TYPE_UINT32,
    "uint64": _Field.TYPE_UINT64,
    "float": _Field.TYPE_FLOAT,
    "double": _Field.TYPE_DOUBLE,
    "string": _Field.TYPE_STRING,
    "bytes": _Field.TYPE_BYTES,
}


def _field(name: str, number: int, kind: str, *, repeated: bool = False) -> _Field:
    """``[repeated] kind name = number;`` where kind is a scalar or a message of the package."""
    field = _Field(
        name=name,
        number=number,
        label=_Field.LABEL_REPEATED if repeated else _Field.LABEL_OPTIONAL,
        json_name=name,
    )
    if kind in _SCALARS:
        field.type = _SCALARS[kind]
    else:
        field.type = _Field.TYPE_MESSAGE
        field.type_name = f".{PACKAGE}.{kind}"
    return field


def _message(
    name: str,
    *fields: _Field,
    nested: tuple[descriptor_pb2.DescriptorProto, ...] = (),
    parameters: int | None = None,
) -> descriptor_pb2.DescriptorProto:
    """``message name { fields }``; ``parameters``: the number of its
    ``map<string, InferParameter> parameters`` field, if it has one."""
    message = descriptor_pb2.DescriptorProto(name=name, field=fields, nested_type=nested)
    if parameters is not None:
        # A map field is, on the wire and in the descriptor, a repeated entry message.
        entry = message.nested_type.add(name="ParametersEntry")
        entry.options.map_entry = True
        entry.field.extend([_field("key", 1, "string"), _field("value", 2, "InferParameter")])
        message.field.append(_field("parameters", parameters, "ParametersEntry", repeated=True))
    return message


def _tensor(name: str, *, parameters: int, contents: int | None) -> descriptor_pb2.DescriptorProto:
    fields = [_field("name", 1, "string")]
    if contents is not None:  # requested outputs carry neither
        fields += [_field("datatype", 2, "string"), _field("shape", 3, "int64", repeated=True)]
        fields += [_field("contents", contents, "InferTensorContents")]
    return _message(name, *fields, parameters=parameters)


def _qualify(message: descriptor_pb2.DescriptorProto, outer: str) -> None:
    """A field naming a message nested in its own gets that name qualified by ``outer``, the
    path of the message it is declared in (``ModelInferRequest.InferInputTensor``)."""
    for field in message.field:
        short = field.type_name.removeprefix(f".{PACKAGE}.")
        if any(nested.name == short for nested in message.nested_type):
            field.type_name = f".{PACKAGE}.{outer}.{short}"
    for nested in message.nested_type:
        _qualify(nested, f"{outer}.{nested.name}")


def _spec() -> descriptor_pb2.FileDescriptorProto:
    tensor_metadata = _message(
        "TensorMetadata",
        _field("name", 1, "string"),
        _field("datatype", 2, "string"),
        _field("shape", 3, "int64", repeated=True),
    )
    parameter = _message(
        "InferParameter",
        _field("bool_param", 1, "bool"),
        _field("int64_param", 2, "int64"),
        _field("string_param", 3, "string"),
    )
    parameter.oneof_decl.add(name="parameter_choice")
    for field in parameter.field:
        field.oneof_index = 0
    messages = [
        _message("ServerLiveRequest"),
        _message("ServerLiveResponse", _field("live", 1, "bool")),
        _message("ServerReadyRequest"),
        _message("ServerReadyResponse", _field("ready", 1, "bool")),
        _message("ModelReadyRequest", _field("name", 1, "string"), _field("version", 2, "string")),
        _message("ModelReadyResponse", _field("ready", 1, "bool")),
        _message("ServerMetadataRequest"),
        _message(
            "ServerMetadataResponse",
            _field("name", 1, "string"),
            _field("version", 2, "string"),
            _field("extensions", 3, "string", repeated=True),
        ),
        _message(
            "ModelMetadataRequest", _field("name", 1, "string"), _field("version", 2, "string")
        ),
        _message(
            "ModelMetadataResponse",
            _field("name", 1, "string"),
            _field("versions", 2, "string", repeated=True),
            _field("platform", 3, "string"),
            _field("inputs", 4, "TensorMetadata", repeated=True),
            _field("outputs", 5, "TensorMetadata", repeated=True),
            nested=(tensor_metadata,),
        ),
        _message(
            "ModelInferRequest",
            _field("model_name", 1, "string"),
            _field("model_version", 2, "string"),
            _field("id", 3, "string"),
            _field("inputs", 5, "InferInputTensor", repeated=True),
            _field("outputs", 6, "InferRequestedOutputTensor", repeated=True),
            _field("raw_input_contents", 7, "bytes", repeated=True),
            nested=(
                _tensor("InferInputTensor", parameters=4, contents=5),
                _tensor("InferRequestedOutputTensor", parameters=2, contents=None),
            ),
            parameters=4,
        ),
        _message(
            "ModelInferResponse",
            _field("model_name", 1, "string"),
            _field("model_version", 2, "string"),
            _field("id", 3, "string"),
            _field("outputs", 5, "InferOutputTensor", repeated=True),
            _field("raw_output_contents", 6, "bytes", repeated=True),
            nested=(_tensor("InferOutputTensor", parameters=4, contents=5),),
            parameters=4,
        ),
        parameter,
        _message(
            "InferTensorContents",
            _field("bool_contents", 1, "bool", repeated=True),
            _field("int_contents", 2, "int32", repeated=True),
            _field("int64_contents", 3, "int64", repeated=True),
            _field("uint_contents", 4, "uint32", repeated=True),
            _field("uint64_contents", 5, "uint64", repeated=True),
            _field("fp32_contents", 6, "float", repeated=True),
            _field("fp64_contents", 7, "double", repeated=True),
            _field("bytes_contents", 8, "bytes", repeated=True),
        ),
    ]
    for message in messages:
        _qualify(message, message.name)
    return descriptor_pb2.FileDescriptorProto(
        name="modelplane/grpc_predict_v2.proto",
        package=PACKAGE,
        syntax="proto3",  # repeated scalars packed, as every KServe and Triton client sends them
        message_type=messages,
    )


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_spec())


def _class(name: str) -> Any:
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{PACKAGE}.{name}"))


ServerLiveResponse = _class("ServerLiveResponse")
ServerReadyResponse = _class("ServerReadyResponse")
ModelReadyRequest = _class("ModelReadyRequest")
ModelReadyResponse = _class("ModelReadyResponse")
ServerMetadataResponse = _class("ServerMetadataResponse")
ModelMetadataRequest = _class("ModelMetadataRequest")
ModelMetadataResponse = _class("ModelMetadataResponse")
ModelInferRequest = _class("ModelInferRequest")
ModelInferResponse = _class("ModelInferResponse")
InferTensorContents = _class("InferTensorContents")
# Nested messages by name: only generated code makes them attributes of the outer class in
# every protobuf implementation (onnxruntime-extensions selects the pure-Python one).
InferInputTensor = _class("ModelInferRequest.InferInputTensor")
InferOutputTensor = _class("ModelInferResponse.InferOutputTensor")
_TensorMetadata = _class("ModelMetadataResponse.TensorMetadata")

# --- tensors -----------------------------------------------------------------------------------

# Each datatype's typed contents field. FP16 has none: the spec carries it raw only.
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_FIELDS_IN_CONTENTS = sorted(set(CONTENTS_FIELD.values()))
# What each typed field holds on the wire.
_FIELD_DTYPES: dict[str, np.dtype[Any]] = {
    "bool_contents": np.dtype(np.bool_),
    "uint_contents": np.dtype(np.uint32),
    "uint64_contents": np.dtype(np.uint64),
    "int_contents": np.dtype(np.int32),
    "int64_contents": np.dtype(np.int64),
    "fp32_contents": np.dtype(np.float32),
    "fp64_contents": np.dtype(np.float64),
}


def model_name_of(message: bytes) -> str | None:
    """The ``model_name`` of a serialized ModelInferRequest, read without parsing the rest, so
    that a key is checked before a message is decoded (as REST checks it before reading the
    body). Encoders write fields in number order, so field 1 comes first; None when it does not
    (the caller parses the message then) or is not text."""
    if len(message) < 2 or message[0] != 0x0A:  # field 1, length-delimited
        return None
    length = shift = 0
    offset = 1
    while offset < len(message) and shift < 35:  # a varint of at most 5 bytes
        byte = message[offset]
        length |= (byte & 0x7F) << shift
        offset += 1
        if not byte & 0x80:
            if offset + length > len(message):
                return None
            try:
                return message[offset : offset + length].decode("utf-8")
            except UnicodeDecodeError:
                return None
        shift += 7
    return None


def inference_request(message: Any) -> InferenceRequest:
    """The core request of a ModelInferRequest: each input with its little-endian bytes, as
    the binary tensor extension delivers them over REST (and checked by the same code)."""
    raw = message.raw_input_contents
    inputs = message.inputs
    if not inputs:
        raise BadRequest("the request has no inputs; send one InferInputTensor per model input")
    if raw and len(raw) != len(inputs):
        raise BadRequest(
            f"the request has {len(inputs)} inputs but {len(raw)} raw_input_contents; send "
            "one raw_input_contents entry per input, in the order of the inputs"
        )
    wire = []
    for index, tensor in enumerate(inputs):
        if raw and tensor.HasField("contents"):
            raise BadRequest(
                f"input '{tensor.name}' has typed contents beside raw_input_contents; "
                "send every input one way or the other"
            )
        data = memoryview(raw[index] if raw else _typed_contents(tensor))
        fields = {"name": tensor.name, "shape": list(tensor.shape), "datatype": tensor.datatype}
        wire.append(unchecked(RequestInput, {**fields, **_NO_DATA}, {"_binary": data}))
    outputs = [
        unchecked(RequestOutput, {"name": o.name, "parameters": None}) for o in message.outputs
    ]
    return unchecked(
        InferenceRequest,
        {"id": message.id or None, "parameters": None, "inputs": wire, "outputs": outputs or None},
    )


_NO_DATA = {"parameters": None, "data": None}  # of a RequestInput: its bytes are private


def _typed_contents(tensor: Any) -> bytes:
    """An input's typed contents as the raw bytes it would have been sent as."""
    where = f"input '{tensor.name}'"
    datatype = tensor.datatype
    field = CONTENTS_FIELD.get(datatype)
    given = [name for name in _FIELDS_IN_CONTENTS if len(getattr(tensor.contents, name))]
    if field is None:
        if datatype in DATATYPES:
            raise BadRequest(
                f"{where}: {datatype} has no typed contents in the protocol; send it in "
                "raw_input_contents (little-endian)"
            )
        raise BadRequest(
            f"{where}: datatype '{datatype}' is not one this server serves ({', '.join(DATATYPES)})"
        )
    if any(name != field for name in given):
        wrong = next(name for name in given if name != field)
        raise BadRequest(f"{where} is {datatype} but carries {wrong}; {datatype} goes in {field}")
    values = getattr(tensor.contents, field)
    shape = list(tensor.shape)
    if all(d >= 0 for d in shape) and len(values) != math.prod(shape):
        raise BadRequest(
            f"{where}: {len(values)} values in {field} but shape {shape} needs "
            f"{math.prod(shape)}; send one value per element, in row-major order"
        )
    if datatype == "BYTES":
        return b"".join(len(v).to_bytes(4, "little") + v for v in values)
    dtype = DATATYPES[datatype]
    array = np.fromiter(values, dtype=_FIELD_DTYPES[field], count=len(values))
    if dtype.itemsize < array.dtype.itemsize and array.size:  # INT8 in int_contents, ...
        info = np.iinfo(dtype)
        outside = (array < info.min) | (array > info.max)
        if outside.any():
            first = int(np.argmax(outside))
            raise BadRequest(
                f"{where}: element {first} of {field} is {int(array[first])}, outside "
                f"{datatype} ({info.min}..{info.max})"
            )
    return array.astype(dtype.newbyteorder("<")).tobytes()


def inference_response(
    model_name: str,
    request_id: str | None,
    outputs: dict[str, np.ndarray[Any, Any]],
    *,
    raw: bool,
) -> bytes:
    """A serialized ModelInferResponse: ``raw`` output contents (as Triton answers, and as
    a request with raw inputs gets them), else typed contents when every output has a typed
    field (FP16 has none: then raw for all, as the spec allows one way per response)."""
    datatypes = [DATATYPE_OF.get(array.dtype) for array in outputs.values()]
    raw = raw or any(datatype not in CONTENTS_FIELD for datatype in datatypes)
    tensors, blobs = [], []
    for (name, array), datatype in zip(outputs.items(), datatypes, strict=True):
        if datatype is None:
            raise TypeError(f"output '{name}' has dtype {array.dtype}, which OIP cannot carry")
        tensor = InferOutputTensor(name=name, datatype=datatype, shape=array.shape)
        if raw:
            blobs.append(_raw_bytes(name, array))
        else:
            values = getattr(tensor.contents, CONTENTS_FIELD[datatype])
            if array.dtype.kind == "O":
                values.extend(string_elements(name, array))
            else:
                values.extend(array.reshape(-1).tolist())
        tensors.append(tensor)
    response = ModelInferResponse(
        model_name=model_name,
        model_version="1",
        id=request_id or "",
        outputs=tensors,
        raw_output_contents=blobs,
    )
    serialized: bytes = response.SerializeToString()
    return serialized


def _raw_bytes(name: str, array: np.ndarray[Any, Any]) -> bytes:
    if array.dtype.kind == "O":
        return strings_to_bytes(name, array)
    if array.dtype.byteorder == ">" or (array.dtype.byteorder == "=" and _BIG_ENDIAN):
        array = array.astype(array.dtype.newbyteorder("<"))
    return array.tobytes()  # (row-major, whatever the array's layout)


_BIG_ENDIAN = sys.byteorder == "big"


def model_metadata(metadata: dict[str, Any]) -> bytes:
    """A serialized ModelMetadataResponse from the model's metadata (as REST answers it)."""
    serialized: bytes = ModelMetadataResponse(
        name=metadata["name"],
        versions=metadata["versions"],
        platform=metadata["platform"],
        inputs=[_TensorMetadata(**spec) for spec in metadata["inputs"]],
        outputs=[_TensorMetadata(**spec) for spec in metadata["outputs"]],
    ).SerializeToString()
    return serialized
