"""Golden files: what each sample renders to, byte for byte.

After an intended change, regenerate with `UPDATE_GOLDEN=1 make test` and
review the diff like any other code change.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from modelplane_api.spec import parse_model_deployment
from modelplane_operator.config import OperatorConfig
from modelplane_operator.render import render_children
from modelplane_operator.yaml_text import dump_all
from test_operator.samples import SAMPLE_FILES, load_sample

GOLDEN_DIR = Path(__file__).parent / "golden"
PROMETHEUS_URL = "http://prometheus-operated.monitoring:9090"


def _config() -> OperatorConfig:
    # Defaults only: the environment of whoever runs the tests cannot change the goldens.
    return OperatorConfig.model_construct(prometheus_url=PROMETHEUS_URL)


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: p.stem)
def test_sample_renders_to_its_golden_file(path: Path) -> None:
    md = parse_model_deployment(load_sample(path))
    rendered = dump_all(render_children(md, _config()))
    golden = GOLDEN_DIR / path.name
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(rendered)
    assert golden.exists(), f"no golden file {golden.name}: run with UPDATE_GOLDEN=1"
    assert rendered == golden.read_text()


def test_every_golden_file_has_a_sample() -> None:
    assert {p.name for p in GOLDEN_DIR.glob("*.yaml")} == {p.name for p in SAMPLE_FILES}
