"""`modelplane render -f FILE` through the installed console script."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from test_operator.samples import SAMPLE_FILES, SAMPLES_DIR

MODELPLANE = shutil.which("modelplane") or str(Path(sys.executable).parent / "modelplane")


PROMETHEUS = {"MODELPLANE_OPERATOR_PROMETHEUS_URL": "http://prometheus.monitoring:9090"}


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MODELPLANE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_render_is_byte_identical_across_runs() -> None:
    sample = str(SAMPLES_DIR / "autoscaling.yaml")
    first, second = _run("render", "-f", sample), _run("render", "-f", sample)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    kinds = [d["kind"] for d in yaml.safe_load_all(first.stdout)]
    assert kinds == ["Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"]


def test_render_many_documents(tmp_path: Path) -> None:
    both = tmp_path / "both.yaml"
    both.write_text("\n---\n".join(p.read_text() for p in SAMPLE_FILES))
    result = _run("render", "-f", str(both), env=PROMETHEUS)
    assert result.returncode == 0, result.stderr
    owners = {
        d["metadata"]["labels"]["app.kubernetes.io/instance"]
        for d in yaml.safe_load_all(result.stdout)
    }
    assert {o.removesuffix("-canary") for o in owners} == {
        yaml.safe_load(p.read_text())["metadata"]["name"] for p in SAMPLE_FILES
    }


def test_render_without_what_the_spec_needs_is_one_line() -> None:
    result = _run("render", "-f", str(SAMPLES_DIR / "scale-to-zero.yaml"))
    assert result.returncode != 0
    assert result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert "models/summarizer" in line
    assert "prometheus.url" in line


def test_invalid_file_gives_one_line_per_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: modelplane.io/v1alpha1\nkind: ModelDeployment\n"
        "metadata: {name: bad}\n"
        "spec:\n  model: {uri: 'ftp://x/m.onnx'}\n  replicas: -2\n  colour: blue\n"
    )
    result = _run("render", "-f", str(bad))
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3, lines
    assert any("spec.model.uri" in line and "s3://" in line for line in lines)
    assert any("spec.replicas" in line for line in lines)
    assert any("spec.colour: unknown field" in line for line in lines)
    assert all(line.startswith(f"{bad} (bad): ") for line in lines)


def test_bad_arguments_give_one_line_and_exit_2(tmp_path: Path) -> None:
    for args in (
        ("render",),
        ("render", "-f", str(tmp_path / "missing.yaml")),
        ("launch",),
    ):
        result = _run(*args)
        assert result.returncode == 2, args
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "Traceback" not in result.stderr


BOMB = "\n".join(
    [f"l0: &l0 [{', '.join(['lol'] * 9)}]"]
    + [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    + ["apiVersion: modelplane.io/v1alpha1", "kind: ModelDeployment", "spec: *l8"]
)
BAD_FILES = {
    "not-yaml": (b"spec: [unclosed\n", "not valid YAML"),
    "alias-bomb": (BOMB.encode(), "aliases expand to more than"),
    "deep-flow": (b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested more than 64"),
    "deep-block": ("".join("  " * i + "k:\n" for i in range(200)).encode(), "nested more than 64"),
    "not-utf8": (b"metadata: {name: \xff\xfe}\n", "not UTF-8 text (byte 0xff at offset 17)"),
    "empty": (b"# nothing\n", "no ModelDeployment"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_file_is_one_line_and_exit_1(tmp_path: Path, case: str) -> None:
    content, words = BAD_FILES[case]
    path = tmp_path / f"{case}.yaml"
    path.write_bytes(content)
    result = _run("render", "-f", str(path))
    assert result.returncode == 1, (result.stdout[:200], result.stderr[-500:])
    assert result.stderr.count("\n") == 1, result.stderr[-2000:]
    assert words in result.stderr
    assert result.stderr.startswith(str(path))
