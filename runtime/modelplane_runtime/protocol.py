"""The Open Inference Protocol (KServe V2) REST wire format.

pydantic models for the envelope, and one table mapping OIP datatypes to numpy.
Tensor ``data`` is deliberately typed ``Any`` in the envelope: json_tensors
decodes and checks it a window at a time straight into numpy, far faster and
smaller than per-element pydantic validation, with errors that name the input
and the element.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from modelplane_runtime.errors import BadRequest, ServingError
from modelplane_runtime.json_tensors import decode_data

# OIP datatype <-> numpy dtype, both ways. BF16 is not served. BYTES elements are
# onnxruntime string tensors: numpy object arrays of str (text, so UTF-8 on the wire).
DATATYPES: dict[str, np.dtype[Any]] = {
    "BYTES": np.dtype(object),
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
DATATYPE_OF: dict[np.dtype[Any], str] = {dtype: name for name, dtype in DATATYPES.items()}

# onnxruntime's type strings for the same types.
ONNX_TYPES: dict[str, str] = {
    "tensor(string)": "BYTES",
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
}

# Non-finite floats have no JSON spelling; like proto3's JSON mapping we send
# them as the strings "NaN", "Infinity" and "-Infinity" (and accept them back:
# json_tensors.NON_FINITE).


class _Wire(BaseModel):
    # strict: a shape of [true], [1.0] or ["1"] is refused, not read as [1]
    model_config = ConfigDict(extra="ignore", strict=True)


class RequestInput(_Wire):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: Any = Field(default=None)
    # Raw little-endian bytes when sent with the binary tensor data extension.
    _binary: memoryview | None = PrivateAttr(default=None)

    @property
    def binary_size(self) -> int | None:
        size = (self.parameters or {}).get("binary_data_size")
        return size if isinstance(size, int) else None


class RequestOutput(_Wire):
    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(_Wire):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


def tensor_from_wire(spec: RequestInput, dtype: np.dtype[Any]) -> np.ndarray[Any, Any]:
    """One input's tensor, from its JSON ``data`` or its binary bytes, checked against
    ``shape`` and ``datatype`` the same way on both paths."""
    where = f"input '{spec.name}'"
    if any(d < 0 for d in spec.shape):
        raise BadRequest(f"{where}: shape {spec.shape} has a negative dimension")
    if spec._binary is not None:
        return _tensor_from_bytes(spec, dtype, spec._binary)
    if spec.data is None:
        raise BadRequest(f"{where}: 'data' is missing")
    return decode_data(where, spec.data, spec.shape, dtype, DATATYPE_OF[dtype])


def _tensor_from_bytes(
    spec: RequestInput, dtype: np.dtype[Any], raw: memoryview
) -> np.ndarray[Any, Any]:
    if dtype.kind == "O":
        return _strings_from_bytes(spec, raw)
    expected = math.prod(spec.shape) * dtype.itemsize
    if len(raw) != expected:
        raise BadRequest(
            f"input '{spec.name}': {len(raw)} bytes of binary data but shape {spec.shape} "
            f"of {DATATYPE_OF[dtype]} needs {expected}"
        )
    if dtype.kind == "b":
        octets = np.frombuffer(raw, dtype=np.uint8)
        if octets.size and octets.max() > 1:
            first = int(np.argmax(octets > 1))
            raise BadRequest(
                f"input '{spec.name}': byte {first} of BOOL data is {octets[first]}; "
                "BOOL elements are one byte, 0 or 1"
            )
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(spec.shape)


def _strings_from_bytes(spec: RequestInput, raw: memoryview) -> np.ndarray[Any, Any]:
    """BYTES in binary: each element a 4-byte little-endian length, then that many bytes."""
    where = f"input '{spec.name}'"
    count = math.prod(spec.shape)
    values: list[str] = []
    offset = 0
    while offset < len(raw):
        if len(values) == count:
            raise BadRequest(
                f"{where}: binary data holds more than the {count} elements of shape {spec.shape}"
            )
        if offset + 4 > len(raw):
            raise BadRequest(f"{where}: BYTES element {len(values)} has a cut-off length prefix")
        size = int.from_bytes(raw[offset : offset + 4], "little")
        offset += 4
        if offset + size > len(raw):
            raise BadRequest(
                f"{where}: BYTES element {len(values)} declares {size} bytes; "
                f"{len(raw) - offset} remain"
            )
        try:
            values.append(str(raw[offset : offset + size], "utf-8"))
        except UnicodeDecodeError:
            raise BadRequest(
                f"{where}: BYTES element {len(values)} is not UTF-8 text "
                "(onnxruntime string tensors hold text)"
            ) from None
        offset += size
    if len(values) != count:
        raise BadRequest(
            f"{where}: {len(values)} elements given but shape {spec.shape} needs {count}"
        )
    return _object_array(values, spec.shape)


def _object_array(values: list[str], shape: list[int]) -> np.ndarray[Any, Any]:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array.reshape(shape)


def _strings_to_bytes(name: str, array: np.ndarray[Any, Any]) -> bytes:
    parts = []
    for value in array.reshape(-1):
        encoded = _utf8(name, value)
        parts += [len(encoded).to_bytes(4, "little"), encoded]
    return b"".join(parts)


def _utf8(name: str, value: Any) -> bytes:
    text = value if isinstance(value, str) else str(value)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise ServingError(f"output '{name}' holds a string that is not valid Unicode") from None


# --- the binary tensor data extension (Triton's; its HTTP client uses it by default) ----------

BINARY_HEADER = "inference-header-content-length"


def split_binary_body(
    body: bytes | bytearray, header_length: str | None
) -> tuple[bytes | bytearray | memoryview, memoryview]:
    """(JSON part, binary tail) of a request body: the body itself or views, not copies."""
    view = memoryview(body)
    if header_length is None:
        return body, view[len(view) :]
    if not (header_length.isascii() and header_length.isdigit()) or int(header_length) > len(body):
        raise BadRequest(f"Inference-Header-Content-Length {header_length} does not fit the body")
    length = int(header_length)
    return view[:length], view[length:]


def attach_binary_inputs(request: InferenceRequest, tail: memoryview) -> None:
    """Give each input declaring ``binary_data_size`` its slice of the tail, in order."""
    offset = 0
    for item in request.inputs:
        size = item.binary_size
        if size is None:
            continue
        if offset + size > len(tail):
            raise BadRequest(f"input '{item.name}': binary_data_size {size} runs past the body")
        item._binary = tail[offset : offset + size]
        offset += size
    if offset != len(tail):
        raise BadRequest(f"{len(tail) - offset} bytes of binary data belong to no input")


def _wants_binary(request: InferenceRequest, name: str) -> bool:
    for output in request.outputs or []:
        if output.name == name and output.parameters and "binary_data" in output.parameters:
            return bool(output.parameters["binary_data"])
    return bool((request.parameters or {}).get("binary_data_output", False))


def encode_response(
    model_name: str, request: InferenceRequest, outputs: dict[str, np.ndarray[Any, Any]]
) -> tuple[bytes, dict[str, str]]:
    """The response body and its extra headers: JSON, or JSON plus binary tensors."""
    wire: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, array in outputs.items():
        if _wants_binary(request, name):
            if array.dtype.kind == "O":
                blob = _strings_to_bytes(name, array)
            else:
                blob = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            wire.append(
                {
                    "name": name,
                    "datatype": DATATYPE_OF[array.dtype],
                    "shape": list(array.shape),
                    "parameters": {"binary_data_size": len(blob)},
                }
            )
            blobs.append(blob)
        else:
            wire.append(tensor_to_wire(name, array))
    body: dict[str, Any] = {"model_name": model_name, "model_version": "1", "outputs": wire}
    if request.id is not None:
        body["id"] = request.id
    header = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, {}
    return header + b"".join(blobs), {"Inference-Header-Content-Length": str(len(header))}


def tensor_to_wire(name: str, array: np.ndarray[Any, Any]) -> dict[str, Any]:
    datatype = DATATYPE_OF.get(array.dtype)
    if datatype is None:
        raise TypeError(f"output '{name}' has dtype {array.dtype}, which OIP cannot carry")
    flat = array.reshape(-1)
    data: Any
    if flat.size > ENCODE_CHUNK:
        data = orjson.Fragment(_json_in_chunks(flat))
    elif array.dtype.kind in "biuf":
        data = _json_ready(flat)
    else:  # BYTES: JSON strings (a string that is not valid Unicode is a 500, named)
        data = [value if isinstance(value, str) else str(value) for value in flat.tolist()]
        for value in data:
            _utf8(name, value)
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": data}


# A large output is written this many elements at a time: each orjson call holds the GIL,
# and the event loop must get it back between them (2.6 million floats take 135 ms).
ENCODE_CHUNK = 65536


def _json_in_chunks(flat: np.ndarray[Any, Any]) -> bytes:
    parts = [
        orjson.dumps(_json_ready(flat[i : i + ENCODE_CHUNK]), option=orjson.OPT_SERIALIZE_NUMPY)[
            1:-1
        ]
        for i in range(0, flat.size, ENCODE_CHUNK)
    ]
    return b"[" + b",".join(parts) + b"]"


def _json_ready(flat: np.ndarray[Any, Any]) -> Any:
    """Numbers as a contiguous array (orjson writes it without Python objects), or, where
    floats are not finite, a list with those spelled as strings."""
    if flat.dtype.kind == "f" and not np.isfinite(flat).all():
        return [
            v
            if math.isfinite(v)
            else ("NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity"))
            for v in flat.tolist()
        ]
    return np.ascontiguousarray(flat)
