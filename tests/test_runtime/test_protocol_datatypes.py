"""Every OIP datatype: what it accepts, and what it refuses naming the input (not only FP32)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from modelplane_runtime.errors import BadRequest
from modelplane_runtime.protocol import DATATYPES, RequestInput, tensor_from_wire

INTEGERS = [name for name, dtype in DATATYPES.items() if dtype.kind in "iu"]
FLOATS = [name for name, dtype in DATATYPES.items() if dtype.kind == "f"]


def _decode(datatype: str, data: Any, shape: list[int] | None = None) -> np.ndarray[Any, Any]:
    spec = RequestInput(name="x", shape=shape or [len(data)], datatype=datatype, data=data)
    return tensor_from_wire(spec, DATATYPES[datatype])


def test_the_table_covers_every_served_datatype() -> None:
    assert set(DATATYPES) == {"BOOL", "BYTES", *INTEGERS, *FLOATS}
    assert len(INTEGERS) == 8
    assert len(FLOATS) == 3


@pytest.mark.parametrize("datatype", INTEGERS)
def test_integers_at_both_bounds_are_exact(datatype: str) -> None:
    info = np.iinfo(DATATYPES[datatype])
    decoded = _decode(datatype, [int(info.min), 0, int(info.max)])
    assert decoded.dtype == DATATYPES[datatype]
    assert decoded.tolist() == [int(info.min), 0, int(info.max)]


@pytest.mark.parametrize("datatype", INTEGERS)
@pytest.mark.parametrize("side", ["below", "above"])
def test_integers_out_of_range_are_refused_not_wrapped(datatype: str, side: str) -> None:
    info = np.iinfo(DATATYPES[datatype])
    value = int(info.min) - 1 if side == "below" else int(info.max) + 1
    with pytest.raises(BadRequest, match=rf"input 'x': .*{datatype}"):
        _decode(datatype, [value])


@pytest.mark.parametrize("datatype", INTEGERS)
def test_floats_for_integers_are_refused_not_truncated(datatype: str) -> None:
    with pytest.raises(BadRequest, match=rf"input 'x': element 0 .* 1.5, a float; .*{datatype}"):
        _decode(datatype, [1.5])


@pytest.mark.parametrize("datatype", [*INTEGERS, *FLOATS])
def test_booleans_and_strings_for_numbers_are_refused(datatype: str) -> None:
    with pytest.raises(BadRequest, match="input 'x'"):
        _decode(datatype, [True, False])
    with pytest.raises(BadRequest, match="input 'x'"):
        _decode(datatype, ["1"])


@pytest.mark.parametrize("datatype", FLOATS)
def test_floats_take_integers_and_non_finite_spellings(datatype: str) -> None:
    decoded = _decode(datatype, [1, 2.5, "NaN", "Infinity", "-Infinity"])
    assert decoded.dtype == DATATYPES[datatype]
    assert decoded[:2].tolist() == [1.0, 2.5]
    assert np.isnan(decoded[2])
    assert decoded[3] == np.inf
    assert decoded[4] == -np.inf


def test_bool_takes_booleans_only() -> None:
    assert _decode("BOOL", [True, False]).tolist() == [True, False]
    with pytest.raises(BadRequest, match=r"input 'x': element 0 .* an integer; expected true or"):
        _decode("BOOL", [1, 0])


@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_shape_and_element_count_must_agree(datatype: str) -> None:
    value = {"BOOL": True, "BYTES": "s"}.get(datatype, 1)
    assert _decode(datatype, [[value, value]], shape=[1, 2]).shape == (1, 2)
    with pytest.raises(BadRequest, match=r"input 'x': 3 elements given but shape \[2, 2\]"):
        _decode(datatype, [value] * 3, shape=[2, 2])
    with pytest.raises(BadRequest, match="negative dimension"):
        _decode(datatype, [value], shape=[-1])
