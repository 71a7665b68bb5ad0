"""Export a torch module to ONNX with a dynamic batch axis, and prove it matches torch.

The parity check runs the exported file in onnxruntime and the module in torch
on the same random inputs at two batch sizes (so the batch axis really is
dynamic) and reports the largest absolute difference; above the tolerance the
export counts as failed.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelplane_api.cli import CommandFailed, UsageError

BATCH_SIZES = (1, 3)


@dataclass(frozen=True)
class ExportReport:
    path: Path
    max_abs_diff: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance


def export_module(
    module: Any,
    output: Path,
    *,
    input_shape: tuple[int, ...],
    dtype: str = "float32",
    opset: int = 18,
    tolerance: float = 1e-4,
    seed: int = 0,
) -> ExportReport:
    import torch

    module = module.eval()
    torch_dtype = getattr(torch, dtype, None)
    if not isinstance(torch_dtype, torch.dtype):
        raise UsageError(f"--dtype {dtype}: not a torch dtype (try float32, float16, int64)")
    generator = torch.Generator().manual_seed(seed)

    def sample(batch: int) -> Any:
        shape = (batch, *input_shape[1:])
        if torch_dtype.is_floating_point:
            return torch.randn(shape, generator=generator).to(torch_dtype)
        return torch.randint(0, 10, shape, generator=generator).to(torch_dtype)

    try:  # before exporting: a shape the module cannot take is the user's to fix, in one line
        with torch.no_grad():
            module(sample(input_shape[0]))
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds; all mean "not this shape"
        shape = ",".join(map(str, input_shape))
        raise UsageError(
            f"--input-shape {shape}: the module does not accept a {dtype} input of that shape: "
            f"{_first_line(exc)}"
        ) from None
    output.parent.mkdir(parents=True, exist_ok=True)
    # torch's exporter warns about optional torchvision ops and its own deprecations:
    # nothing a user of this command can act on.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        try:
            torch.onnx.export(
                module,
                (sample(input_shape[0]),),
                str(output),
                input_names=["input"],
                output_names=["output"],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                opset_version=opset,
                external_data=False,
                verbose=False,
            )
        except Exception as exc:  # noqa: BLE001 - the exporter's errors are many and long
            raise CommandFailed(f"error: torch could not export it: {_first_line(exc)}") from None
    return ExportReport(output, _max_abs_diff(module, output, sample), tolerance)


def _max_abs_diff(module: Any, path: Path, sample: Any) -> float:
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch in BATCH_SIZES:
        x = sample(batch)
        with torch.no_grad():
            expected = module(x)
        expected_list = list(expected) if isinstance(expected, tuple | list) else [expected]
        actual = session.run(None, {"input": x.numpy()})
        for want, got in zip(expected_list, actual, strict=True):
            want_np = want.detach().numpy()
            if want_np.shape != got.shape:
                return float("inf")
            worst = max(worst, float(np.max(np.abs(want_np.astype(np.float64) - got))))
    return worst


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]


def load_target(target: str) -> Any:
    """``module:attribute``: an nn.Module, or a callable returning one."""
    import torch

    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise UsageError(f"{target}: expected module:callable, e.g. my_models:build_classifier")
    try:
        found = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"{target}: {exc}") from None
    module = found if isinstance(found, torch.nn.Module) else found()
    if not isinstance(module, torch.nn.Module):
        raise UsageError(f"{target}: returned {type(module).__name__}, not a torch.nn.Module")
    return module


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise UsageError(f"--input-shape {text}: expected integers like 1,3,224,224") from None
    if not shape or any(d < 1 for d in shape):
        raise UsageError(f"--input-shape {text}: every dimension must be at least 1")
    return shape


def export_from_cli(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(Path.cwd()))  # `module:callable` may live beside the caller
    report = export_module(
        load_target(args.target),
        Path(args.output),
        input_shape=_shape(args.input_shape),
        dtype=args.dtype,
        opset=args.opset,
        tolerance=args.tolerance,
    )
    verdict = "ok" if report.ok else "FAILED"
    print(
        f"exported {report.path}: max abs difference to torch {report.max_abs_diff:.3g} "
        f"(tolerance {report.tolerance:g}) {verdict}"
    )
    return 0 if report.ok else 1
