"""The files an ONNX graph names as external data, read without loading the graph.

onnxruntime reads a tensor's bytes from the file its ``external_data`` ``location``
names, relative to the graph's directory. A hostile graph names ``../../etc/...`` or an
absolute path, or a link out of the directory; onnxruntime refuses these only since
1.24 (and GPU builds lag), so the runtime checks every location itself before any load.
A directory read in place also needs the list, to refuse files its manifest omits.

The graph is walked as protobuf wire format over a memory map, descending only into
the messages that can hold tensors (graphs, nodes, attributes, functions, training
info): tensor bytes are skipped, never read, so a 2 GB graph costs no memory here.
"""

from __future__ import annotations

import mmap
import re
from pathlib import Path, PurePosixPath

# Message -> {field number: message it holds}, for the fields that can lead to a tensor
# (onnx.proto). "entry" is a StringStringEntryProto of a tensor's external_data.
_FIELDS: dict[str, dict[int, str]] = {
    "model": {7: "graph", 20: "training", 25: "function"},
    "training": {1: "graph", 2: "graph"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "function": {7: "node", 11: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
    "tensor": {13: "entry"},
}
_DRIVE = re.compile(r"^[A-Za-z]:")  # C:/weights.bin: absolute on Windows
_MAX_DEPTH = 64  # nested subgraphs (If, Loop, Scan bodies) deeper than this are refused


class UnsafeExternalData(Exception):
    """A location that would read outside the graph's directory, or a graph that cannot be
    read to find out."""


def external_files(graph: Path) -> set[str]:
    """The files ``graph``'s tensors read their bytes from, relative to its directory (posix
    paths); UnsafeExternalData for an absolute location, one with ``..``, or one that
    resolves outside the directory (through a link)."""
    locations = _locations(graph)
    base = graph.parent.resolve()
    files = set()
    for location in sorted(locations):
        path = PurePosixPath(location)
        if not path.parts or path == PurePosixPath("."):
            raise UnsafeExternalData("the graph names external data without a location")
        if path.is_absolute() or location.startswith("\\") or _DRIVE.match(location):
            raise UnsafeExternalData(
                f"the graph's external data location '{location}' is an absolute path; "
                "weights must lie beside the graph"
            )
        if ".." in path.parts or "\\" in location:
            raise UnsafeExternalData(
                f"the graph's external data location '{location}' leaves the model directory"
            )
        if not (base / location).resolve().is_relative_to(base):
            raise UnsafeExternalData(
                f"the graph's external data location '{location}' is a link out of the "
                "model directory"
            )
        files.add(PurePosixPath(*(p for p in path.parts if p != ".")).as_posix())
    return files


def _locations(graph: Path) -> set[str]:
    with graph.open("rb") as stream:
        if graph.stat().st_size == 0:
            return set()
        with mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as data:
            try:
                return _walk(data)
            except (IndexError, ValueError):
                # Not protobuf at all (every valid encoding is walked, groups included):
                # onnxruntime cannot parse it either, and says so in its own words.
                return set()


def _walk(data: mmap.mmap) -> set[str]:
    found: set[str] = set()
    stack = [("model", 0, len(data), 0)]
    while stack:
        kind, position, end, depth = stack.pop()
        if depth > _MAX_DEPTH:
            raise ValueError(f"subgraphs nested deeper than {_MAX_DEPTH}")
        if kind == "entry":
            fields = dict(_strings(data, position, end))
            if fields.get(1) == b"location" and 2 in fields:
                found.add(fields[2].decode("utf-8", "replace"))
            continue
        wanted = _FIELDS[kind]
        while position < end:
            key, position = _varint(data, position)
            number, wire = key >> 3, key & 7
            if wire != 2:
                position = _skip(data, position, key)
                continue
            length, position = _varint(data, position)
            if position + length > end:
                raise ValueError("a field runs past its message")
            if number in wanted:
                stack.append((wanted[number], position, position + length, depth + 1))
            position += length
        if position != end:
            raise ValueError("a message is cut short")
    return found


def _skip(data: mmap.mmap, position: int, key: int) -> int:
    """Past a field that is not length-delimited (a group is walked to its end)."""
    wire = key & 7
    if wire == 0:
        return _varint(data, position)[1]
    if wire == 1:
        return position + 8
    if wire == 5:
        return position + 4
    if wire == 3:
        while True:
            inner, position = _varint(data, position)
            if inner == (key >> 3) << 3 | 4:
                return position
            if inner & 7 == 2:
                length, position = _varint(data, position)
                position += length
            else:
                position = _skip(data, position, inner)
    raise ValueError(f"wire type {wire}")


def _strings(data: mmap.mmap, position: int, end: int) -> list[tuple[int, bytes]]:
    fields = []
    while position < end:
        key, position = _varint(data, position)
        if key & 7 == 2:
            length, position = _varint(data, position)
            fields.append((key >> 3, data[position : position + length]))
            position += length
        elif key & 7 == 0:
            _, position = _varint(data, position)
        else:
            raise ValueError("an external_data entry holds something other than strings")
    return fields


def _varint(data: mmap.mmap, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7
        if shift > 63:
            raise ValueError("a varint over 64 bits")
