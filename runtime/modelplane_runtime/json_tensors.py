"""JSON request bodies in bounded memory, and tensor data checked, never coerced.

A JSON parser makes a Python object per number: about 32 bytes for an element
whose text may be 4 bytes, and a request at the size limit cost 20 times its size.
So a large body is read in two parts:

- the *envelope*: each input's ``"data": [...]`` array that holds only numbers
  (and the spelled ``"NaN"``, ``"Infinity"``, ``"-Infinity"``, ``true``, ``false``,
  ``null``) is cut out, left as a view into the body, and replaced by a
  placeholder; what remains is small and parsed as usual (and capped at
  :data:`MAX_ENVELOPE_BYTES`);
- each cut-out array is decoded by :func:`decode_data` a window at a time
  straight into the tensor's numpy array, so no more than one window's Python
  objects ever exist.

Every value is checked against the declared datatype (no ``null`` as NaN, no
``true`` as 1, no number that overflows the type, no numeric string), and the
nesting against the declared shape: either one flat list of all elements, or
lists nested exactly as the shape. Errors name the input, the element and what
was expected.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from modelplane_runtime.errors import BadRequest, PayloadTooLarge

WINDOW = 256 * 1024  # bytes of data text decoded at a time
SMALL_BODY = 64 * 1024  # below this a body is parsed whole: its objects cost little
MAX_ENVELOPE_BYTES = 4 * 1024 * 1024  # everything but the numeric data arrays
MAX_CUT_ARRAYS = 1024

NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_DATA_KEY = re.compile(rb'"data"\s*:\s*\[')
_SPECIALS = (b'"NaN"', b'"Infinity"', b'"-Infinity"')
# Bytes a numeric data array may hold: numbers, nesting, whitespace, the spelled
# non-finite floats and the JSON literals (refused or accepted per datatype later).
_PLAIN = np.zeros(256, dtype=bool)
_PLAIN[list(b'0123456789.eE+-,[] \t\r\n"NaInfityruesl')] = True
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b"[],")
_BRACKETS = b"[]"


@dataclass(frozen=True)
class DataText:
    """One input's ``data`` array as JSON text, not yet decoded (usually a view into the
    request body)."""

    text: bytes | bytearray | memoryview


# --- the envelope ---------------------------------------------------------------------------


def parse_body(body: bytes | bytearray | memoryview) -> Any:
    """The JSON document, with large numeric ``data`` arrays as :class:`DataText`."""
    if len(body) < SMALL_BODY:
        return _loads(body)
    source = body if isinstance(body, bytes | bytearray) else bytes(body)
    nonce = secrets.token_hex(8)
    pieces: list[bytes] = []
    arrays: dict[str, memoryview] = {}
    view = memoryview(source)
    position = 0
    search_from = 0
    # search(), not finditer(): each search starts after the last array cut out, so the
    # numbers are never scanned by the regex (which holds the GIL for as long as it runs)
    while (found := _DATA_KEY.search(source, search_from)) is not None:
        start = search_from = found.end() - 1
        if _escaped(source, found.start()):
            continue
        end = _array_end(source, start)
        if end is None:
            continue
        search_from = end
        marker = f"{nonce}:{len(arrays)}"
        pieces += [bytes(view[position:start]), b'"' + marker.encode() + b'"']
        arrays[marker] = view[start:end]
        position = end
        if len(arrays) >= MAX_CUT_ARRAYS:
            break
    pieces.append(bytes(view[position:]))
    envelope = b"".join(pieces)
    if len(envelope) > MAX_ENVELOPE_BYTES:
        raise PayloadTooLarge(
            f"the request's JSON outside numeric 'data' arrays is {len(envelope)} bytes, "
            f"over the {MAX_ENVELOPE_BYTES}-byte limit; send tensors as numbers in 'data' "
            "or with the binary tensor extension"
        )
    document = _loads(envelope)
    return _restore(document, arrays) if arrays else document


def _loads(text: bytes | bytearray | memoryview) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None


def _escaped(source: bytes | bytearray, quote: int) -> bool:
    backslashes = 0
    while quote - backslashes - 1 >= 0 and source[quote - backslashes - 1] == 0x5C:
        backslashes += 1
    return backslashes % 2 == 1


def _array_end(source: bytes | bytearray, start: int) -> int | None:
    """The end of the array opening at ``start`` if it holds only plain bytes, else None.

    Vectorised a window at a time (nesting depth by cumulative sum, brackets inside
    strings masked), so its cost does not depend on how many brackets there are.
    """
    depth = 0
    quotes = 0
    total = len(source)
    for window_start in range(start, total, WINDOW):
        window = np.frombuffer(
            source, dtype=np.uint8, count=min(WINDOW, total - window_start), offset=window_start
        )
        in_string = (np.cumsum(window == 0x22, dtype=np.int32) + quotes) % 2 == 1
        step = (window == 0x5B).astype(np.int32) - (window == 0x5D)
        step[in_string] = 0
        levels = np.cumsum(step, dtype=np.int32) + depth
        closed = np.flatnonzero(levels == 0)
        stop = int(closed[0]) + 1 if closed.size else window.size
        if not _PLAIN[window[:stop]].all():
            return None
        quotes += int(np.count_nonzero(window[:stop] == 0x22))
        if closed.size:
            end = window_start + stop
            if quotes and not _only_special_strings(source, start, end):
                return None
            return end
        depth = int(levels[-1])
    raise BadRequest("request body is not valid JSON: a 'data' array is never closed")


def _only_special_strings(source: bytes | bytearray, start: int, end: int) -> bool:
    quotes = source.count(b'"', start, end)
    return quotes == 0 or quotes == 2 * sum(source.count(s, start, end) for s in _SPECIALS)


def _restore(document: Any, arrays: dict[str, memoryview]) -> Any:
    """Put each cut-out array back: as DataText where it is an input's data, else parsed."""
    inputs = document.get("inputs") if isinstance(document, dict) else None
    for item in inputs if isinstance(inputs, list) else []:
        marker = item.get("data") if isinstance(item, dict) else None
        if isinstance(marker, str) and (text := arrays.pop(marker, None)) is not None:
            item["data"] = DataText(text)
    return _restore_elsewhere(document, arrays) if arrays else document


def _restore_elsewhere(value: Any, arrays: dict[str, memoryview]) -> Any:
    if isinstance(value, str) and value in arrays:
        return orjson.loads(arrays[value])
    if isinstance(value, dict):
        return {k: _restore_elsewhere(v, arrays) for k, v in value.items()}
    if isinstance(value, list):
        return [_restore_elsewhere(v, arrays) for v in value]
    return value


# --- one tensor's data ----------------------------------------------------------------------


def decode_data(
    where: str, data: Any, shape: list[int], dtype: np.dtype[Any], datatype: str
) -> np.ndarray[Any, Any]:
    """``data`` (DataText, or a value parsed with the envelope) as an array of ``shape``."""
    if dtype.kind == "O":
        return _strings(where, data, shape)
    if isinstance(data, list):
        kinds = set(map(type, data))
        values = _values_as_shaped(data, shape, kinds)
        if values is not None:
            known = kinds if values is data else None
            return _typed(where, values, dtype, datatype, 0, kinds=known).reshape(shape)
    # Cut out of a large body, or misshapen (the text path says exactly how).
    text = data.text if isinstance(data, DataText) else _as_text(where, data)
    count = math.prod(shape)
    out = np.empty(count, dtype=dtype)
    decoded = 0
    structure = bytearray()
    for window in _windows(where, text):
        structure += window.translate(None, _NOT_STRUCTURE)
        values = _window_values(where, window, decoded)
        if values and decoded + len(values) <= count:
            out[decoded : decoded + len(values)] = _typed(where, values, dtype, datatype, decoded)
        decoded += len(values)  # past the count: only counted, for the message
    if decoded != count:
        raise BadRequest(f"{where}: {decoded} elements given but shape {shape} needs {count}")
    if not _nested_as(structure, shape):
        raise BadRequest(
            f"{where}: data must be one flat list of {count} values or lists nested "
            f"exactly as shape {shape}"
        )
    return out.reshape(shape)


def _strings(where: str, data: Any, shape: list[int]) -> np.ndarray[Any, Any]:
    """BYTES as JSON: strings, one flat list or nested exactly as ``shape``."""
    if not isinstance(data, list):
        raise BadRequest(f"{where}: 'data' must be a list of strings")
    kinds = set(map(type, data))
    values = _values_as_shaped(data, shape, kinds)
    if values is None:
        count = math.prod(shape)
        if list not in kinds:
            raise BadRequest(f"{where}: {len(data)} elements given but shape {shape} needs {count}")
        raise BadRequest(
            f"{where}: data must be one flat list of {count} strings or lists nested "
            f"exactly as shape {shape}"
        )
    _refuse(where, values, 0, lambda v: type(v) is str, "a string (BYTES)")
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array.reshape(shape)


def _values_as_shaped(data: list[Any], shape: list[int], kinds: set[type]) -> list[Any] | None:
    """The values of an already-parsed ``data`` in row-major order, if it is one flat list
    of the right length or lists nested exactly as ``shape``; else None. ``kinds``: the
    types of ``data``'s items."""
    if list not in kinds:
        return data if len(data) == math.prod(shape) else None
    if len(shape) < 2:
        return None
    values: list[Any] = []
    rows = [data]
    for size in shape[:-1]:  # one level of nesting at a time
        if any(type(row) is not list or len(row) != size for row in rows):
            return None
        rows = [item for row in rows for item in row]
    if any(type(row) is not list or len(row) != shape[-1] for row in rows):
        return None
    for row in rows:
        values += row
    return None if list in set(map(type, values)) else values


def _as_text(where: str, data: Any) -> bytes:
    if not isinstance(data, list):
        raise BadRequest(f"{where}: 'data' must be a list of values, not {type(data).__name__}")
    try:
        return orjson.dumps(data)
    except TypeError:  # integers beyond 64 bits (only from Python callers)
        return json.dumps(data).encode()


def _windows(where: str, text: bytes | bytearray | memoryview) -> Iterator[bytes]:
    """Pieces of at most WINDOW bytes, each ending at a comma (or the end of the text)."""
    view = memoryview(text)
    position = 0
    while position < len(view):
        end = min(position + WINDOW, len(view))
        piece = bytes(view[position:end])
        if end < len(view):
            cut = piece.rfind(b",")
            if cut < 0:
                raise BadRequest(f"{where}: data holds a value longer than {WINDOW} bytes")
            piece = piece[: cut + 1]
        position += len(piece)
        yield piece


def _window_values(where: str, window: bytes, offset: int) -> list[Any]:
    stripped = window.translate(None, _BRACKETS).strip().rstrip(b",")
    if not stripped:
        return []
    try:
        values: list[Any] = orjson.loads(b"[" + stripped + b"]")
    except orjson.JSONDecodeError as exc:
        raise BadRequest(
            f"{where}: data is not a list of JSON values after element {offset}: {exc}"
        ) from None
    return values


def _nested_as(structure: bytearray, shape: list[int]) -> bool:
    count = math.prod(shape)
    if structure == _flat(count):
        return True
    return len(shape) > 1 and structure == _nested(shape)


def _flat(count: int) -> bytes:
    return b"[" + b"," * max(count - 1, 0) + b"]"


def _nested(shape: list[int]) -> bytes:
    level = _flat(shape[-1])
    for size in reversed(shape[:-1]):
        level = b"[" + b",".join([level] * size) + b"]"
    return level


def _typed(
    where: str,
    values: list[Any],
    dtype: np.dtype[Any],
    datatype: str,
    offset: int,
    *,
    kinds: set[type] | None = None,
) -> np.ndarray[Any, Any]:
    """One window's values as ``dtype``, or a 400 naming the first that does not fit."""
    if not values:
        return np.empty(0, dtype=dtype)
    kinds = set(map(type, values)) if kinds is None else kinds
    if dtype.kind == "b":
        if kinds != {bool}:
            _refuse(where, values, offset, lambda v: type(v) is bool, f"true or false ({datatype})")
        return np.array(values, dtype=dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        in_range = f"a value within the {datatype} range [{info.min}, {info.max}]"
        if kinds != {int}:
            _refuse(where, values, offset, _within_64_bits, in_range)
            _refuse(where, values, offset, lambda v: type(v) is int, f"an integer ({datatype})")
        low, high = min(values), max(values)
        if low < info.min or high > info.max:
            _refuse(where, values, offset, lambda v: info.min <= v <= info.max, in_range)
        return np.array(values, dtype=dtype)
    if not kinds <= {int, float}:
        _refuse(where, values, offset, _is_float_value, f"a number ({datatype}); {_SPELLED}")
        values = [NON_FINITE[v] if type(v) is str else v for v in values]
    elif (
        len(values) <= _FEW
        and -(largest := _LARGEST[dtype.itemsize]) <= min(values)
        and (max(values) <= largest)
    ):
        # JSON numbers are finite: in range, nothing overflows. For a few values, two
        # builtins cost less than numpy's error state and an isinf pass (~6 us a request).
        return np.array(values, dtype=dtype)
    with np.errstate(over="ignore"):
        array = np.array(values, dtype=dtype)
    if dtype.itemsize == 8:  # JSON numbers are finite doubles: nothing overflows FP64
        return array
    overflowed = np.isinf(array)
    if overflowed.any():
        overflowed &= np.isfinite(np.array(values, dtype=np.float64))
        if overflowed.any():
            first = int(np.argmax(overflowed))
            raise BadRequest(
                f"{where}: element {offset + first} is {values[first]!r}, which overflows "
                f"{datatype} (largest {float(np.finfo(dtype).max):g})"
            )
    return array


_FEW = 256
_LARGEST = {n: float(np.finfo(f"f{n}").max) for n in (2, 4, 8)}
_SPELLED = 'non-finite values are spelled "NaN", "Infinity", "-Infinity"'


def _within_64_bits(value: Any) -> bool:
    """JSON parsers read integers beyond 64 bits as floats: those are out of range."""
    return not (type(value) is float and value.is_integer() and abs(value) >= 2**63)


def _is_float_value(value: Any) -> bool:
    return type(value) in (int, float) or (type(value) is str and value in NON_FINITE)


_KINDS = {bool: "a boolean", int: "an integer", float: "a float", str: "a string"}


def _refuse(
    where: str, values: list[Any], offset: int, fits: Callable[[Any], bool], expected: str
) -> None:
    """Raise a 400 for the first value that does not fit."""
    for index, value in enumerate(values):
        if not fits(value):
            shown = json.dumps(value)
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            kind = _KINDS.get(type(value), "null" if value is None else "a nested value")
            raise BadRequest(
                f"{where}: element {offset + index} (row-major) is {shown}, {kind}; "
                f"expected {expected}"
            )
