"""The framework-free onnxruntime core: load, signature, validate, infer.

Nothing here knows about HTTP or BentoML; the service maps requests onto
:class:`OnnxModel` and its errors onto status codes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from modelplane_api.facts import GPU_PROVIDERS, MANIFEST_FILE
from modelplane_api.settings import RuntimeSettings
from modelplane_runtime.errors import BadRequest, FetchError, ServingError
from modelplane_runtime.external_data import UnsafeExternalData, external_files
from modelplane_runtime.fetch import file_sha256, read_manifest
from modelplane_runtime.protocol import DATATYPES, ONNX_TYPES, RequestInput, tensor_from_wire

log = logging.getLogger("modelplane.runtime")

_OPTIMIZATION = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


# After a run this large, onnxruntime's CPU arena gives back what it grew by: a single
# large request must not raise the pod's memory for good.
LARGE_RUN_BYTES = 8 * 1024 * 1024
_SHRINK_ARENA = ort.RunOptions()
_SHRINK_ARENA.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")


def run_options(large: bool) -> ort.RunOptions:
    """Options of their own for one run, so that it alone can be terminated (``terminate``
    is checked between nodes, and inside Loop and If bodies)."""
    options = ort.RunOptions()
    if large:
        options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return options


class ModelLoadError(ServingError):
    """The model cannot serve; the message becomes the readiness detail."""

    status = 503


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 for a dynamic dimension

    @property
    def dtype(self) -> np.dtype[Any]:
        return DATATYPES[self.datatype]

    def fits(self, shape: Sequence[int]) -> bool:
        return len(shape) == len(self.shape) and all(
            want in (-1, got) for want, got in zip(self.shape, shape, strict=True)
        )

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def _tensor_spec(node: Any, role: str) -> TensorSpec:
    datatype = ONNX_TYPES.get(node.type)
    if datatype is None:
        raise ModelLoadError(
            f"{role} '{node.name}' has type {node.type}, which modelplane does not serve "
            f"(supported: {', '.join(sorted(ONNX_TYPES))})"
        )
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (node.shape or []))
    return TensorSpec(node.name, datatype, shape)


def choose_providers(
    requested: Sequence[str], available: Sequence[str], *, allow_cpu_fallback: bool
) -> list[str]:
    """The providers to ask onnxruntime for, in order; never a silent CPU fallback."""
    usable = [p for p in requested if p in available]
    wants_gpu = any(p in GPU_PROVIDERS for p in requested)
    if wants_gpu and not any(p in GPU_PROVIDERS for p in usable):
        missing = ", ".join(p for p in requested if p in GPU_PROVIDERS)
        if not allow_cpu_fallback:
            raise ModelLoadError(
                f"{missing} requested but this onnxruntime offers only {', '.join(available)}; "
                "install onnxruntime-gpu on a GPU node, or set runtime.allowCpuFallback "
                "to serve on CPU"
            )
        log.warning("%s unavailable; serving on CPU because allowCpuFallback is set", missing)
        return ["CPUExecutionProvider"]
    return usable or ["CPUExecutionProvider"]


def check_provider_in_use(
    requested: Sequence[str], in_use: Sequence[str], *, allow_cpu_fallback: bool
) -> str:
    """onnxruntime falls back to CPU with only a warning when CUDA fails to load: refuse that."""
    primary = in_use[0] if in_use else "CPUExecutionProvider"
    wanted_gpu = any(p in GPU_PROVIDERS for p in requested)
    if wanted_gpu and primary not in GPU_PROVIDERS and not allow_cpu_fallback:
        raise ModelLoadError(
            f"onnxruntime could not start {requested[0]} (the session runs on {primary}); "
            "check the GPU driver and CUDA libraries on the node, or set "
            "runtime.allowCpuFallback to serve on CPU"
        )
    return primary


def graph_file(directory: Path, name: str | None) -> Path:
    """The ONNX graph in a model directory: ``name``, or the only .onnx file in it.
    onnxruntime finds external data (weights) beside the graph by their relative paths."""
    if name is not None:
        graph = directory / name
        if not graph.resolve().is_relative_to(directory.resolve()):
            raise ModelLoadError(f"the graph file '{name}' would lie outside {directory}")
        if not graph.is_file():
            raise ModelLoadError(f"the model directory {directory} has no graph file '{name}'")
        return graph
    graphs = sorted(p for p in directory.rglob("*.onnx") if p.is_file())
    if len(graphs) == 1:
        return graphs[0]
    if not graphs:
        raise ModelLoadError(f"the model directory {directory} holds no .onnx file")
    listed = ", ".join(str(g.relative_to(directory)) for g in graphs[:5])
    raise ModelLoadError(
        f"the model directory {directory} holds several .onnx files ({listed}); "
        "name the graph (model.graph, serve --graph)"
    )


def verify_model_directory(directory: Path, sha256: str, graph: Path) -> None:
    """The directory's SHA256SUMS has digest ``sha256``, lists the graph, and every file it
    lists has its digest; else ModelLoadError naming what differs."""
    manifest = directory / MANIFEST_FILE
    if not manifest.is_file():
        raise ModelLoadError(
            f"the model directory {directory} has no {MANIFEST_FILE}: model.sha256 of a "
            f"directory is the digest of its {MANIFEST_FILE} manifest"
        )
    if file_sha256(manifest) != sha256:
        raise ModelLoadError(f"{manifest} does not have the expected sha256 {sha256}")
    try:
        listed = read_manifest(manifest)
    except FetchError as exc:
        raise ModelLoadError(str(exc)) from None
    if graph.relative_to(directory).as_posix() not in listed:
        raise ModelLoadError(f"{MANIFEST_FILE} does not list the graph {graph.name}")
    # onnxruntime reads (maps) whatever file the graph names: each must be one verified here.
    folder = graph.parent.relative_to(directory)
    for name in sorted(weight_files(graph)):
        if (folder / name).as_posix() not in listed:
            raise ModelLoadError(
                f"the graph reads external data from {(folder / name).as_posix()}, which "
                f"{MANIFEST_FILE} does not list: only files it lists are verified"
            )
    for name, expected in listed.items():
        target = directory / name
        if not target.resolve().is_relative_to(directory.resolve()) or not target.is_file():
            raise ModelLoadError(f"{MANIFEST_FILE} lists {name}, which {directory} does not hold")
        if file_sha256(target) != expected:
            raise ModelLoadError(f"{target} does not have the sha256 {MANIFEST_FILE} gives")


def weight_files(graph: Path) -> set[str]:
    """The files the graph reads external data from, relative to its directory; refused
    when one would lie outside it (an absolute path, ``..``, a link out)."""
    try:
        return external_files(graph)
    except UnsafeExternalData as exc:
        raise ModelLoadError(f"refusing {graph}: {exc}") from None


SessionFactory = Callable[[str, ort.SessionOptions, list[str]], Any]
CUSTOM_DOMAIN = "ai.onnx.contrib"  # onnxruntime-extensions' operators


def _custom_operator_library(name: str) -> str:
    """The shared library of a custom operator package, by its name in the settings."""
    try:
        import onnxruntime_extensions  # noqa: PLC0415 - optional: only models that need it
    except ImportError:
        raise ModelLoadError(
            f"custom operators '{name}' are not installed in this runtime image "
            "(pip install onnxruntime-extensions)"
        ) from None
    path: str = onnxruntime_extensions.get_library_path()
    return path


def _create_session(path: str, options: ort.SessionOptions, providers: list[str]) -> Any:
    return ort.InferenceSession(path, sess_options=options, providers=providers)


class OnnxModel:
    """One loaded ONNX model with its signature and the provider actually in use."""

    def __init__(self, name: str, session: Any, provider: str) -> None:
        self.name = name
        self.session = session
        self.provider = provider
        self.inputs = {n.name: _tensor_spec(n, "input") for n in session.get_inputs()}
        self.outputs = {n.name: _tensor_spec(n, "output") for n in session.get_outputs()}
        self.output_names = list(self.outputs)
        # Requests can be merged along axis 0 only when every tensor has a dynamic first axis.
        self.batchable = all(
            spec.shape and spec.shape[0] == -1
            for spec in (*self.inputs.values(), *self.outputs.values())
        )
        # The inputs whose first axis is the batch axis, which rows are counted on whatever
        # order a request lists its inputs in (a scalar listed first must not make it 1 row):
        # those with a dynamic first axis; without any, a fixed one (a fixed batch).
        self.batch_inputs = tuple(
            name for name, spec in self.inputs.items() if spec.shape and spec.shape[0] == -1
        ) or tuple(name for name, spec in self.inputs.items() if spec.shape)

    @classmethod
    def load(
        cls,
        settings: RuntimeSettings,
        *,
        available_providers: Sequence[str] | None = None,
        session_factory: SessionFactory = _create_session,
    ) -> OnnxModel:
        path = Path(settings.model_path)
        if path.is_dir():
            # A fetched one was verified as it was fetched (no sha256 is set here); one read
            # in place (pvc://, file://) is verified now, through its manifest.
            graph = graph_file(path, settings.model_graph)
            if settings.model_sha256:
                verify_model_directory(path, settings.model_sha256, graph)
            path = graph
        elif not path.is_file():
            raise ModelLoadError(f"model file {path} does not exist")
        elif settings.model_sha256:
            actual = file_sha256(path)
            if actual != settings.model_sha256:
                raise ModelLoadError(
                    f"model file {path} has sha256 {actual}, not the expected "
                    f"{settings.model_sha256}; refusing to serve it"
                )
            if weight_files(path):
                raise ModelLoadError(
                    f"model file {path} reads external data that its sha256 does not cover; "
                    "serve it as a directory (a uri ending in /) with a SHA256SUMS manifest"
                )
        weight_files(path)  # before onnxruntime opens anything the graph names
        available = (
            ort.get_available_providers() if available_providers is None else available_providers
        )
        providers = choose_providers(
            settings.execution_providers,
            available,
            allow_cpu_fallback=settings.allow_cpu_fallback,
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = settings.intra_op_threads
        options.inter_op_num_threads = settings.inter_op_threads
        options.graph_optimization_level = _OPTIMIZATION[settings.graph_optimization_level]
        # Spinning threads burn CPU quota between requests; a server is rarely compute-bound
        # on every core at once.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        for library in settings.custom_operators:
            options.register_custom_ops_library(_custom_operator_library(library))
        try:
            session = session_factory(str(path), options, providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own hierarchy
            hint = ""
            if CUSTOM_DOMAIN in str(exc) and not settings.custom_operators:
                hint = (
                    f"; the model uses custom operators (domain {CUSTOM_DOMAIN}): set "
                    "spec.runtime.customOperators: [onnxruntime-extensions] "
                    "(MODELPLANE_CUSTOM_OPERATORS)"
                )
            raise ModelLoadError(f"onnxruntime cannot load {path}: {exc}{hint}") from None
        provider = check_provider_in_use(
            settings.execution_providers,
            session.get_providers(),
            allow_cpu_fallback=settings.allow_cpu_fallback,
        )
        model = cls(settings.model_name, session, provider)
        log.info(
            "loaded %s from %s on %s (batchable=%s)", model.name, path, provider, model.batchable
        )
        return model

    # --- requests -----------------------------------------------------------

    def decode_inputs(self, inputs: Sequence[RequestInput]) -> dict[str, np.ndarray[Any, Any]]:
        """Check wire inputs against the signature and turn them into arrays."""
        arrays: dict[str, np.ndarray[Any, Any]] = {}
        for item in inputs:
            spec = self.inputs.get(item.name)
            if spec is None:
                raise BadRequest(
                    f"unknown input '{item.name}'; the model's inputs are "
                    + ", ".join(f"'{n}'" for n in self.inputs)
                )
            if item.name in arrays:
                raise BadRequest(f"input '{item.name}' is given twice")
            if item.datatype != spec.datatype:
                raise BadRequest(
                    f"input '{item.name}' has datatype {item.datatype}; "
                    f"the model expects {spec.datatype}"
                )
            if not spec.fits(item.shape):
                raise BadRequest(
                    f"input '{item.name}' has shape {item.shape}; the model expects "
                    f"{list(spec.shape)} (-1 is any size)"
                )
            arrays[item.name] = tensor_from_wire(item, spec.dtype)
        missing = [spec for name, spec in self.inputs.items() if name not in arrays]
        if missing:
            raise BadRequest(
                "missing input "
                + ", ".join(f"'{s.name}' ({s.datatype} {list(s.shape)})" for s in missing)
            )
        if self.batchable and len({a.shape[0] for a in arrays.values()}) > 1:
            raise BadRequest("all inputs must have the same size along the batch axis (axis 0)")
        return arrays

    def check_outputs(self, names: Sequence[str]) -> list[str]:
        unknown = [n for n in names if n not in self.outputs]
        if unknown:
            raise BadRequest(
                f"unknown output '{unknown[0]}'; the model's outputs are "
                + ", ".join(f"'{n}'" for n in self.outputs)
            )
        return list(names)

    def rows(self, arrays: Mapping[str, np.ndarray[Any, Any]]) -> int:
        """A request's rows: its size along the model's batch axis (1 without one)."""
        if self.batchable:  # every input has the batch axis, and decode_inputs checked
            return rows(arrays)  # that they agree
        sizes = [arrays[n].shape[0] for n in self.batch_inputs if n in arrays]
        return int(max(sizes)) if sizes else 1

    def declared_rows(self, inputs: Sequence[RequestInput]) -> int:
        """The rows a request declares (its shapes, before any data is decoded): what a row
        limit is checked against. A shape that does not fit is refused by decoding later."""
        sizes = [
            item.shape[0]
            for item in inputs
            if item.shape and item.name in self.batch_inputs and isinstance(item.shape[0], int)
        ]
        return max(0, *sizes) if sizes else 1

    def is_large(self, arrays: Mapping[str, np.ndarray[Any, Any]]) -> bool:
        return sum(a.nbytes for a in arrays.values()) >= LARGE_RUN_BYTES

    def run(
        self,
        arrays: Mapping[str, np.ndarray[Any, Any]],
        options: ort.RunOptions | None = None,
    ) -> list[np.ndarray[Any, Any]]:
        """All outputs, in signature order. Blocking: call it off the event loop."""
        if options is None and self.is_large(arrays):
            options = _SHRINK_ARENA
        try:
            outputs: list[np.ndarray[Any, Any]] = self.session.run(
                self.output_names, arrays, options
            )
        except ort.capi.onnxruntime_pybind11_state.InvalidArgument as exc:
            raise BadRequest(f"the model rejected the input: {_first_line(exc)}") from None
        return outputs

    # --- start-up -----------------------------------------------------------

    def sample_inputs(
        self, batch: int = 1, memory_limit: int | None = None
    ) -> dict[str, np.ndarray[Any, Any]]:
        """Zeros of every input, dynamic dimensions set to ``batch`` (first) or 1."""
        arrays = {}
        for spec in self.inputs.values():
            shape = [(batch if i == 0 else 1) if d == -1 else d for i, d in enumerate(spec.shape)]
            arrays[spec.name] = _generated(spec, shape, memory_limit)
        return arrays

    def warm_up(
        self,
        iterations: int,
        max_batch_size: int,
        shapes: Sequence[Mapping[str, Sequence[int]]] | None = None,
        memory_limit: int | None = None,
    ) -> None:
        """Run generated inputs so that the first real request pays no allocation cost: at
        batch 1 and ``max_batch_size``, or at each of ``shapes`` (input name -> shape).
        Inputs that could not fit in ``memory_limit``, or be allocated, are a
        ModelLoadError."""
        sizes = {1, max_batch_size} if self.batchable else {1}
        runs = (
            [(f"shape {dict(s)}", self.inputs_shaped(s, memory_limit)) for s in shapes]
            if shapes
            else [
                (f"batch {size}", self.sample_inputs(size, memory_limit)) for size in sorted(sizes)
            ]
        )
        for _ in range(iterations):
            for what, arrays in runs:
                try:
                    self.run(arrays)
                except Exception as exc:  # noqa: BLE001
                    raise ModelLoadError(
                        f"warm-up failed on generated inputs of {what}: {_first_line(exc)}"
                    ) from None

    def inputs_shaped(
        self, shapes: Mapping[str, Sequence[int]], memory_limit: int | None = None
    ) -> dict[str, Any]:
        """Generated inputs: ``shapes`` where named (checked against the signature)."""
        arrays = self.sample_inputs(1, memory_limit)
        for name, shape in shapes.items():
            spec = self.inputs.get(name)
            if spec is None:
                raise ModelLoadError(
                    f"warm-up shape names input '{name}'; the model's inputs are "
                    + ", ".join(f"'{n}'" for n in self.inputs)
                )
            if not spec.fits(list(shape)):
                raise ModelLoadError(
                    f"warm-up shape {list(shape)} for input '{name}' does not fit the model's "
                    f"{list(spec.shape)} (-1 is any size)"
                )
            arrays[name] = _generated(spec, list(shape), memory_limit)
        return arrays

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": ["1"],
            "platform": "onnxruntime_onnx",
            "inputs": [spec.as_dict() for spec in self.inputs.values()],
            "outputs": [spec.as_dict() for spec in self.outputs.values()],
            "parameters": {"execution_provider": self.provider, "batchable": self.batchable},
        }


def _generated(spec: TensorSpec, shape: list[int], memory_limit: int | None) -> Any:
    """Zeros (empty strings for BYTES) of ``shape`` for warm-up; a ModelLoadError, not a
    traceback, when they cannot be allocated or could not fit in the memory limit."""
    size = math.prod(shape) * spec.dtype.itemsize
    if memory_limit is not None and size > memory_limit:
        raise ModelLoadError(
            f"input '{spec.name}' of shape {shape} needs {size >> 20} MiB, more than the "
            f"memory limit of {memory_limit >> 20} MiB; raise resources.limits.memory"
        )
    try:
        if spec.dtype.kind == "O":  # BYTES: onnxruntime wants text
            return np.full(shape, "", dtype=object)
        return np.zeros(shape, dtype=spec.dtype)
    except (MemoryError, ValueError) as exc:
        raise ModelLoadError(
            f"warm-up cannot allocate input '{spec.name}' of shape {shape} "
            f"({size >> 20} MiB): {_first_line(exc)}"
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def rows(arrays: Mapping[str, np.ndarray[Any, Any]]) -> int:
    first = next(iter(arrays.values()))
    return int(first.shape[0]) if first.ndim else 1
