"""The Open Inference Protocol (KServe V2) REST wire format.

pydantic models for the envelope, and one table mapping OIP datatypes to numpy.
Tensor ``data`` is deliberately typed ``Any`` in the envelope: numpy converts
and checks it in C (``tensor_from_wire``), far faster than per-element pydantic
validation, and with errors that name the input.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from modelplane_runtime.errors import BadRequest

# OIP datatype <-> numpy dtype, both ways. BYTES and BF16 are not served.
DATATYPES: dict[str, np.dtype[Any]] = {
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
# them as the strings "NaN", "Infinity" and "-Infinity" (and accept them back).
NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


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
    """Decode one input's ``data`` (flat row-major or nested) into an array of ``shape``.

    numpy first infers what the JSON holds, so that a float sent for an integer
    input, a number for a BOOL, or an out-of-range integer is refused instead of
    silently truncated or wrapped.
    """
    where = f"input '{spec.name}'"
    if spec._binary is not None:
        return _tensor_from_bytes(spec, dtype, spec._binary)
    if spec.data is None:
        raise BadRequest(f"{where}: 'data' is missing")
    if any(d < 0 for d in spec.shape):
        raise BadRequest(f"{where}: shape {spec.shape} has a negative dimension")
    try:
        raw = np.asarray(spec.data)
    except (ValueError, OverflowError):
        raise BadRequest(
            f"{where}: data must be numbers in rectangular nested lists or one flat list"
        ) from None
    if raw.dtype.kind in "USO" and dtype.kind == "f":
        raw = _non_finite_from_text(spec, raw)
    elif raw.dtype.kind in "fO" and dtype == np.uint64:
        raw = _large_unsigned(spec, spec.data, raw)
    expected = math.prod(spec.shape)
    if raw.size != expected:
        raise BadRequest(
            f"{where}: {raw.size} elements given but shape {spec.shape} needs {expected}"
        )
    if raw.size and raw.dtype.kind not in _ACCEPTED_KINDS[dtype.kind]:
        raise BadRequest(
            f"{where}: data holds {_KIND_NAMES.get(raw.dtype.kind, 'mixed values')}, "
            f"not {DATATYPE_OF[dtype]} values"
        )
    if raw.size and dtype.kind in "iu":
        info = np.iinfo(dtype)
        if raw.min() < info.min or raw.max() > info.max:
            raise BadRequest(
                f"{where}: values outside the {DATATYPE_OF[dtype]} range [{info.min}, {info.max}]"
            )
    return raw.astype(dtype, copy=False).reshape(spec.shape)


# What numpy infers from JSON values, by the tensor kind that accepts it: ints fit floats.
_ACCEPTED_KINDS = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}
_KIND_NAMES = {
    "b": "booleans",
    "i": "integers",
    "u": "integers",
    "f": "floats",
    "U": "strings",
    "S": "strings",
    "O": "mixed values",
}


def _large_unsigned(
    spec: RequestInput, data: Any, raw: np.ndarray[Any, Any]
) -> np.ndarray[Any, Any]:
    """numpy infers float64 when ints above INT64's range mix with small ones; keep them exact."""

    def flatten(value: Any) -> list[Any]:
        return [v for item in value for v in flatten(item)] if isinstance(value, list) else [value]

    flat = flatten(data)
    if all(type(v) is int and v >= 0 for v in flat):
        if max(flat, default=0) > np.iinfo(np.uint64).max:
            raise BadRequest(
                f"input '{spec.name}': values outside the UINT64 range "
                f"[0, {np.iinfo(np.uint64).max}]"
            )
        return np.array(flat, dtype=np.uint64).reshape(raw.shape)
    return raw


def _non_finite_from_text(spec: RequestInput, raw: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    def replace(value: Any) -> Any:
        if isinstance(value, list):
            return [replace(item) for item in value]
        if isinstance(value, str):
            if value not in NON_FINITE:  # "1" is not a number: checked, not coerced
                raise ValueError(value)
            return NON_FINITE[value]
        return value

    try:
        replaced = np.asarray(replace(spec.data), dtype=np.float64)
    except (ValueError, TypeError):
        raise BadRequest(
            f"input '{spec.name}': data holds strings; floats accept numbers and "
            '"NaN", "Infinity", "-Infinity"'
        ) from None
    return replaced if replaced.size == raw.size else raw


def _tensor_from_bytes(
    spec: RequestInput, dtype: np.dtype[Any], raw: memoryview
) -> np.ndarray[Any, Any]:
    expected = math.prod(spec.shape) * dtype.itemsize
    if len(raw) != expected:
        raise BadRequest(
            f"input '{spec.name}': {len(raw)} bytes of binary data but shape {spec.shape} "
            f"of {DATATYPE_OF[dtype]} needs {expected}"
        )
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(spec.shape)


# --- the binary tensor data extension (Triton's; its HTTP client uses it by default) ----------

BINARY_HEADER = "inference-header-content-length"


def split_binary_body(
    body: bytes | bytearray, header_length: str | None
) -> tuple[memoryview, memoryview]:
    """(JSON part, binary tail) of a request body: views, not copies."""
    view = memoryview(body)
    if header_length is None:
        return view, view[len(view) :]
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
    if array.dtype.kind == "f" and not np.isfinite(flat).all():
        data: Any = [
            v
            if math.isfinite(v)
            else ("NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity"))
            for v in flat.tolist()
        ]
    elif array.dtype.kind in "biuf":
        data = np.ascontiguousarray(flat)  # orjson writes numeric arrays without Python objects
    else:
        data = flat.tolist()
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": data}
