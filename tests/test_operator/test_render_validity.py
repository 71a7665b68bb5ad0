"""Every rendered object is valid Kubernetes (1.29 and newest) and every pod is
Pod Security "restricted"; proven on the samples and on generated specs."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelplane_api.spec import parse_model_deployment
from modelplane_operator.config import OperatorConfig
from modelplane_operator.render import Observed, render_children
from modelplane_testkit.kube_validation import problems_in
from modelplane_testkit.pod_security import restricted_violations
from test_operator.samples import SAMPLE_FILES, load_sample


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: p.stem)
def test_sample_objects_pass_schema_and_pod_security(path: Path) -> None:
    config = OperatorConfig(prometheus_url="http://prometheus-operated.monitoring:9090")
    objects = render_children(parse_model_deployment(load_sample(path)), config)
    assert problems_in(objects) == []


def test_checks_can_fail() -> None:
    """The validators catch what they exist to catch."""
    md = parse_model_deployment(load_sample(SAMPLE_FILES[0]))
    deployment = render_children(md, OperatorConfig())[0]
    pod = deployment["spec"]["template"]["spec"]

    for breach in (
        lambda p: p["containers"][0]["securityContext"].update(allowPrivilegeEscalation=True),
        lambda p: p["containers"][0]["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]),
        lambda p: p["securityContext"].update(runAsUser=0),
        lambda p: p.update(hostNetwork=True),
        lambda p: p["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
        lambda p: [
            ctx.pop("seccompProfile")
            for ctx in (p["securityContext"], *(c["securityContext"] for c in p["containers"]))
        ],
    ):
        broken = copy.deepcopy(pod)
        breach(broken)
        assert restricted_violations(broken), breach

    unknown_field = copy.deepcopy(deployment)
    unknown_field["spec"]["template"]["spec"]["containers"][0]["gpus"] = 1
    assert problems_in([unknown_field])


# --- property: any spec pydantic accepts renders valid, restricted objects ---

_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
_quantity = st.one_of(
    st.integers(1, 64).map(str),
    st.integers(1, 64000).map(lambda n: f"{n}m"),
    st.integers(1, 1024).map(lambda n: f"{n}Mi"),
    st.integers(1, 64).map(lambda n: f"{n}Gi"),
    st.sampled_from(["0.5", "1.5", "1e3", "2G"]),
)
_amounts = st.fixed_dictionaries(
    {}, optional={"cpu": _quantity, "memory": _quantity, "ephemeral-storage": _quantity}
)
_uri = st.one_of(
    st.sampled_from(["s3://b/m.onnx", "gs://b/m.onnx", "https://h/m.onnx", "http://h:8/m"]),
    st.builds(lambda c, p: f"pvc://{c}/{p}.onnx", _label, _label),
    st.builds(lambda p: f"file:///models/{p}.onnx", _label),
)
_sha = st.one_of(st.none(), st.text("0123456789abcdef", min_size=64, max_size=64))
_toleration = st.fixed_dictionaries(
    {"key": _label},
    optional={
        "operator": st.sampled_from(["Exists", "Equal"]),
        "effect": st.sampled_from(["NoSchedule", "PreferNoSchedule", "NoExecute"]),
        "tolerationSeconds": st.integers(0, 3600),
    },
).map(  # the API server allows tolerationSeconds only with effect NoExecute
    lambda t: (
        t
        if t.get("effect") == "NoExecute"
        else {k: v for k, v in t.items() if k != "tolerationSeconds"}
    )
)
_affinity = st.sampled_from(
    [
        None,
        {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["a100"]}]}
                    ]
                }
            }
        },
        {
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 1, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname"}}
                ]
            }
        },
    ]
)


@st.composite
def model_deployments(draw: st.DrawFn) -> dict[str, Any]:
    gpu = draw(st.integers(0, 8))
    providers = draw(
        st.one_of(
            st.none(),
            st.just(
                ["CUDAExecutionProvider", "CPUExecutionProvider"]
                if gpu
                else ["CPUExecutionProvider"]
            ),
            st.just(
                ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
                if gpu
                else ["CPUExecutionProvider"]
            ),
        )
    )
    runtime: dict[str, Any] = {
        "allowCpuFallback": draw(st.booleans()),
        "threads": {"intraOp": draw(st.integers(0, 64)), "interOp": draw(st.integers(0, 64))},
        "batching": {
            "maxBatchSize": draw(st.integers(1, 4096)),
            "maxLatencyMs": draw(st.integers(0, 60000)),
        },
        "warmup": {"iterations": draw(st.integers(0, 1000))},
        "requestTimeoutSeconds": draw(st.integers(1, 3600)),
    }
    if providers:
        runtime["executionProviders"] = providers
    if draw(st.booleans()):
        runtime["image"] = "registry.example/runtime:" + draw(_label)
    spec: dict[str, Any] = {
        "model": {"uri": draw(_uri)},
        "runtime": runtime,
        "resources": {
            "gpu": {
                "count": gpu,
                "resourceName": draw(
                    st.sampled_from(["nvidia.com/gpu", "amd.com/gpu", "gpu.intel.com/i915"])
                ),
            }
        },
        "replicas": draw(st.integers(0, 1000)),
        "scheduling": {
            "nodeSelector": draw(st.dictionaries(_label, _label, max_size=3)),
            "tolerations": draw(st.lists(_toleration, max_size=3)),
        },
        "rollout": {
            "maxSurge": draw(st.one_of(st.integers(1, 10), st.just("25%"))),
            "maxUnavailable": draw(st.one_of(st.integers(0, 3), st.just("10%"))),
        },
    }
    if (sha := draw(_sha)) is not None:
        spec["model"]["sha256"] = sha
    if requests := draw(_amounts):
        spec["resources"]["requests"] = requests
    if limits := draw(_amounts):
        spec["resources"]["limits"] = limits
    if (affinity := draw(_affinity)) is not None:
        spec["scheduling"]["affinity"] = affinity
    if draw(st.booleans()):
        spec["scheduling"]["priorityClassName"] = draw(_label)
    canary = draw(st.booleans())
    if draw(st.booleans()):
        engine = draw(st.sampled_from(["hpa", "keda"]))
        low = draw(st.integers(0 if engine == "keda" and not canary else 1, 50))
        spec["autoscaling"] = {
            "engine": engine,
            "minReplicas": low,
            "maxReplicas": draw(st.integers(max(low, 1), 1000)),
            "metric": draw(st.sampled_from(["cpu", "memory", "pendingRequests"])),
            "target": draw(st.integers(1, 500)),
        }
    if canary or draw(st.booleans()):
        spec["route"] = {"gateway": {"name": draw(_label)}, "hostnames": [f"{draw(_label)}.io"]}
    if canary:
        spec["canary"] = {
            "weight": draw(st.integers(0, 100)),
            "model": {"uri": "s3://bucket/v2.onnx"},
            "replicas": draw(st.integers(1, 5)),
            "promote": draw(st.booleans()),
        }
    if draw(st.booleans()):
        spec["model"]["credentials"] = draw(
            st.sampled_from([{"secretRef": {"name": "creds"}}, {"serviceAccountName": "reader"}])
        )
    longest = 56 if canary else 63  # a canary's children add "-canary"
    name = draw(st.from_regex(rf"[a-z]([a-z0-9-]{{0,{longest - 2}}}[a-z0-9])?", fullmatch=True))
    return {
        "apiVersion": "modelplane.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": draw(_label)},
        "spec": spec,
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model_deployments(), st.booleans())
def test_any_accepted_spec_renders_valid_restricted_objects(
    obj: dict[str, Any], progressed: bool
) -> None:
    md = parse_model_deployment(obj)  # the strategy draws only specs the model accepts
    config = OperatorConfig(prometheus_url="http://prometheus.monitoring:9090")
    # A canary just created, or Ready with the model promoted onto its spec.
    observed = Observed(canary_ready=progressed, model_on_canary=progressed)
    assert problems_in(render_children(md, config, observed)) == []
