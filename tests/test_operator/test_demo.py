"""`make demo`'s first half: every sample renders, with nothing configured."""

from __future__ import annotations

import os
import subprocess
import sys

from test_operator.samples import SAMPLE_FILES


def test_the_demo_renders_every_sample_without_configuration() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPLANE_OPERATOR_")}
    result = subprocess.run(
        [sys.executable, "-m", "modelplane_operator.demo"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    for path in SAMPLE_FILES:
        assert f"{path.name}: " in result.stdout, path.name
    assert "ScaledObject" in result.stdout
    assert "HTTPRoute" in result.stdout
