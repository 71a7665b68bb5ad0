"""promtool, Prometheus's rule checker and rule unit-test runner.

Found as envtest finds its binaries: $PROMTOOL, else on PATH, else in this virtualenv's
bin/ (where `make test` unpacks it from Debian's prometheus package). Without it the
tests that need it skip, saying how to get it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

HOW_TO_GET_IT = "no promtool: `make promtool` (Debian's prometheus package) or set PROMTOOL"


def find_promtool() -> Path | None:
    named = os.environ.get("PROMTOOL")
    if named:
        return Path(named)
    on_path = shutil.which("promtool")
    if on_path:
        return Path(on_path)
    beside = Path(sys.executable).parent / "promtool"
    return beside if beside.exists() else None


def promtool(binary: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        check=False,
    )
