"""The local demo (``make demo``): no cluster needed.

Renders every sample ModelDeployment into the objects the operator applies
and prints a one-line summary per object, then the full YAML of the first.
"""

from __future__ import annotations

import sys
from pathlib import Path

from modelplane_api.loader import load_model_deployments
from modelplane_operator.config import OperatorConfig
from modelplane_operator.render import render_children, service_url
from modelplane_operator.yaml_text import dump_all

SAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "samples"


# What the chart's prometheus.url would say in a cluster with the Prometheus Operator: the
# scale-to-zero and canary samples need one.
DEMO_PROMETHEUS_URL = "http://prometheus-operated.monitoring:9090"


def render_samples(out: list[str]) -> None:
    config = OperatorConfig()
    if config.prometheus_url is None:
        config = config.model_copy(update={"prometheus_url": DEMO_PROMETHEUS_URL})
    first: list[dict[str, object]] = []
    for path in sorted(SAMPLES.glob("*.yaml")):
        for md in load_model_deployments(path):
            objects = render_children(md, config)
            first = first or objects
            out.append(f"{path.name}: {md.namespace}/{md.name} -> {service_url(md, config)}")
            for obj in objects:
                out.append(f"    {obj['kind']:<24} {obj['metadata']['name']}")
    out.append("")
    out.append("The objects for the first sample, as the operator applies them:")
    out.append(dump_all(first))


def main() -> int:
    lines: list[str] = ["== modelplane render: sample ModelDeployments -> Kubernetes objects"]
    render_samples(lines)
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
