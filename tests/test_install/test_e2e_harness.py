"""The real control-plane harness without a control plane: it says how to get one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from modelplane_testkit.control_plane import control_plane, find_assets

REPO = Path(__file__).resolve().parents[2]


def test_without_binaries_it_says_how_to_get_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MODELPLANE_E2E_KUBECONFIG", raising=False)
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(tmp_path))
    assert find_assets() is None
    with pytest.raises(LookupError, match="KUBEBUILDER_ASSETS"), control_plane(tmp_path):
        pass


def test_make_e2e_without_binaries_skips_in_one_line(tmp_path: Path) -> None:
    """What CI would print: one line, and success."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_e2e"],
        cwd=REPO,
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
            "MODELPLANE_E2E": "1",
            "KUBEBUILDER_ASSETS": str(tmp_path),
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = [line for line in result.stdout.splitlines() if "control-plane tests not run" in line]
    assert len(lines) == 1, result.stdout
    assert "KUBEBUILDER_ASSETS" in lines[0]
    assert result.returncode == 5, result.stdout  # no test ran; `make e2e` maps 5 to success
