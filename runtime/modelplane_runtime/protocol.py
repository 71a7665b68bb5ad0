"""The Open Inference Protocol (KServe V2) REST wire format.

pydantic models for the envelope, and one table mapping OIP datatypes to numpy.
Tensor ``data`` is deliberately typed ``Any`` in the envelope: json_tensors
decodes and checks it a window at a time straight into numpy, far faster and
smaller than per-element pydantic validation, with errors that name the input
and the element.
"""

from __future__ import annotations

import math
import struct
from array import array as packed
from typing import Any, TypeVar

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from modelplane_runtime.errors import BadRequest, PayloadTooLarge, ServingError
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

    @property
    def has_strings(self) -> bool:
        return any(item.datatype == "BYTES" for item in self.inputs)


WireModel = TypeVar("WireModel", bound=_Wire)


def unchecked(
    model: type[WireModel], values: dict[str, Any], private: dict[str, Any] | None = None
) -> WireModel:
    """``model.model_construct(**values)``, for values already typed (a protobuf message's):
    every field in ``values``, ``private`` its private attributes. model_construct fills
    defaults field by field, which costs a gRPC request more than parsing its message (15-20
    us per object); this is what it leaves behind, held to it by a test."""
    item = model.__new__(model)
    object.__setattr__(item, "__dict__", values)
    object.__setattr__(item, "__pydantic_fields_set__", set(values))
    object.__setattr__(item, "__pydantic_extra__", None)
    object.__setattr__(item, "__pydantic_private__", private)
    return item


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


# --- BYTES: what they cost, and decoding them without a Python object per element -----------

# At most this many BYTES elements per request (all inputs together), checked from the
# declared shapes before anything is decoded: each element costs onnxruntime a std::string
# in and, for string outputs, a Python object out, whatever its size on the wire.
MAX_STRING_ELEMENTS = 1 << 20
# What one BYTES element costs beyond its text, charged to the request memory budget:
# onnxruntime's std::string (32 bytes) in and out, an output's Python str (about 50 bytes)
# and its pointer, its JSON. Measured: 1M elements of 5 bytes into a model with 1.5 string
# outputs per input element raised the server's RSS by 257 MiB (bench/runtime_limits.py's
# way: peak RSS over the request).
STRING_ELEMENT_BYTES = 256


def string_cost(request: InferenceRequest) -> int:
    """The memory a request's BYTES inputs will cost beyond their body, from the declared
    shapes; 413 over :data:`MAX_STRING_ELEMENTS` elements."""
    elements = text = 0
    for item in request.inputs:
        if item.datatype == "BYTES" and all(d >= 0 for d in item.shape):
            elements += math.prod(item.shape)
            text += len(item._binary) if item._binary is not None else 0
    if elements > MAX_STRING_ELEMENTS:
        raise PayloadTooLarge(
            f"the request has {elements} BYTES elements, over the limit of "
            f"{MAX_STRING_ELEMENTS} per request; send fewer, longer strings or split the request"
        )
    return elements * STRING_ELEMENT_BYTES + text


# A fixed-width array is used when it is at most this many times the text (plus one byte
# per element): else one long string among many short ones would cost count x longest.
_FIXED_WIDTH_SLACK = 4
_COPY_BYTES = 1 << 20  # of the fixed-width array filled (and checked) at a time
_WIDE = 4096  # elements wider than this are copied one by one (there are few of them)
_LENGTH = struct.Struct("<I")


def _strings_from_bytes(spec: RequestInput, raw: memoryview) -> np.ndarray[Any, Any]:
    """BYTES in binary: each element a 4-byte little-endian length, then that many bytes.

    Decoded into a fixed-width bytes array (numpy ``S``, one NUL at least after each
    element, which onnxruntime reads as a C string): no Python object per element, and its
    text checked as UTF-8 a block at a time. Text holding NUL, or lengths too uneven for a
    fixed width, fall back to an array of Python strings."""
    where = f"input '{spec.name}'"
    count = math.prod(spec.shape)
    starts, lengths = _element_bounds(where, raw, count, spec.shape)
    text = int(lengths.sum()) if count else 0
    width = int(lengths.max()) + 1 if count else 1
    if count and count * width <= _FIXED_WIDTH_SLACK * (text + count):
        fixed = _fixed_width(where, raw, starts, lengths, width)
        if fixed is not None:
            return fixed.reshape(spec.shape)
    values: list[str] = []
    for index, (start, length) in enumerate(zip(starts.tolist(), lengths.tolist(), strict=True)):
        values.append(_text(where, raw[start : start + length], index))
    return _object_array(values, spec.shape)


def _element_bounds(
    where: str, raw: memoryview, count: int, shape: list[int]
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Where each element's bytes start, and their lengths (checked against ``raw``)."""
    starts, lengths = packed("q"), packed("q")
    offset, total, unpack = 0, len(raw), _LENGTH.unpack_from
    add_start, add_length = starts.append, lengths.append  # the loop runs once an element
    for found in range(count):  # never more: a body of empty elements is cut short
        if offset + 4 > total:
            if offset == total:
                raise BadRequest(f"{where}: {found} elements given but shape {shape} needs {count}")
            raise BadRequest(f"{where}: BYTES element {found} has a cut-off length prefix")
        (size,) = unpack(raw, offset)
        offset += 4
        add_start(offset)
        add_length(size)
        offset += size
        if offset > total:
            raise BadRequest(
                f"{where}: BYTES element {found} declares {size} bytes; "
                f"{total - offset + size} remain"
            )
    if offset < total:
        raise BadRequest(
            f"{where}: binary data holds more than the {count} elements of shape {shape}"
        )
    return np.frombuffer(starts, dtype=np.int64), np.frombuffer(lengths, dtype=np.int64)


def _fixed_width(
    where: str,
    raw: memoryview,
    starts: np.ndarray[Any, Any],
    lengths: np.ndarray[Any, Any],
    width: int,
) -> np.ndarray[Any, Any] | None:
    """The elements as a ``S{width}`` array, or None if one holds a NUL byte."""
    source = np.frombuffer(raw, dtype=np.uint8)
    out = np.zeros((len(starts), width), dtype=np.uint8)
    columns = np.arange(width)
    rows = max(1, _COPY_BYTES // width)
    for low in range(0, len(starts), rows):
        high = min(low + rows, len(starts))
        if width > _WIDE:
            for row in range(low, high):
                start, length = int(starts[row]), int(lengths[row])
                out[row, :length] = source[start : start + length]
            block_text = out[low:high]
            if np.count_nonzero(block_text) != int(lengths[low:high].sum()):
                return None  # a NUL inside an element: not representable as a C string
        else:
            inside = columns < lengths[low:high, None]
            picked = source[(starts[low:high, None] + columns)[inside]]
            if not picked.all():  # a NUL inside an element: not representable as a C string
                return None
            out[low:high][inside] = picked
        block = out[low:high].tobytes()
        try:  # each element is followed by a NUL, so the block is UTF-8 only if each is
            block.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadRequest(
                f"{where}: BYTES element {low + exc.start // width} is not UTF-8 text "
                "(onnxruntime string tensors hold text)"
            ) from None
    return out.view(f"S{width}").reshape(-1)


def _text(where: str, value: memoryview, index: int) -> str:
    try:
        return str(value, "utf-8")
    except UnicodeDecodeError:
        raise BadRequest(
            f"{where}: BYTES element {index} is not UTF-8 text "
            "(onnxruntime string tensors hold text)"
        ) from None


def _object_array(values: list[str], shape: list[int]) -> np.ndarray[Any, Any]:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array.reshape(shape)


def strings_to_bytes(name: str, array: np.ndarray[Any, Any]) -> bytes:
    """BYTES elements in binary: each a 4-byte little-endian length, then its UTF-8 text."""
    parts = []
    for encoded in string_elements(name, array):
        parts += [len(encoded).to_bytes(4, "little"), encoded]
    return b"".join(parts)


def string_elements(name: str, array: np.ndarray[Any, Any]) -> list[bytes]:
    """An output's BYTES elements as UTF-8, in row-major order."""
    return [_utf8(name, value) for value in array.reshape(-1)]


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
                blob = strings_to_bytes(name, array)
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
        data = orjson.Fragment(_json_in_chunks(name, flat))
    elif array.dtype.kind in "biuf":
        data = _json_ready(flat)
    else:
        data = _json_strings(name, flat)
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": data}


def _json_strings(name: str, flat: np.ndarray[Any, Any]) -> list[str]:
    """BYTES as JSON strings (a string that is not valid Unicode is a 500, named)."""
    data = [value if isinstance(value, str) else str(value) for value in flat.tolist()]
    for value in data:
        _utf8(name, value)
    return data


# A large output is written this many elements at a time: each orjson call holds the GIL,
# and the event loop must get it back between them (2.6 million floats take 135 ms).
ENCODE_CHUNK = 65536


def _json_in_chunks(name: str, flat: np.ndarray[Any, Any]) -> bytes:
    ready = _json_ready if flat.dtype.kind in "biuf" else lambda c: _json_strings(name, c)
    parts = [
        orjson.dumps(ready(flat[i : i + ENCODE_CHUNK]), option=orjson.OPT_SERIALIZE_NUMPY)[1:-1]
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
