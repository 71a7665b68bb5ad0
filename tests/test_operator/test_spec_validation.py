"""The pydantic spec and the CRD agree: both accept every sample and reject every
entry of the invalid catalogue, each with a message naming the field."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from modelplane_api.spec import InvalidSpecError, parse_model_deployment
from modelplane_testkit.crd_validation import apply_defaults, crd_schema, validate_against_crd
from test_operator.samples import SAMPLE_FILES, load_sample, minimal


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: p.stem)
def test_samples_are_valid_for_pydantic_and_the_crd(path: Any) -> None:
    sample = load_sample(path)
    parse_model_deployment(sample)
    assert validate_against_crd(sample) == []


def test_there_is_a_sample_for_each_kind_of_deployment() -> None:
    stems = {p.stem for p in SAMPLE_FILES}
    assert {"cpu-minimal", "autoscaling", "gpu", "pvc"} <= stems


Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutation:
    def mutate(obj: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        node = obj
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value

    return mutate


def _delete(path: str) -> Mutation:
    def mutate(obj: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        node = obj
        for key in parents:
            node = node[key]
        del node[leaf]

    return mutate


def _both(first: Mutation, second: Mutation) -> Mutation:
    def mutate(obj: dict[str, Any]) -> None:
        first(obj)
        second(obj)

    return mutate


# (case id, mutation of a valid ModelDeployment, text both messages must contain)
INVALID: list[tuple[str, Mutation, str]] = [
    ("negative-replicas", _set("spec.replicas", -1), "replicas"),
    ("fractional-replicas", _set("spec.replicas", 1.5), "replicas"),
    (
        "min-above-max",
        _set("spec.autoscaling", {"minReplicas": 5, "maxReplicas": 2}),
        "minReplicas",
    ),
    ("autoscaling-without-max", _set("spec.autoscaling", {"minReplicas": 1}), "maxReplicas"),
    ("unknown-uri-scheme", _set("spec.model.uri", "ftp://host/model.onnx"), "uri"),
    ("uri-without-scheme", _set("spec.model.uri", "/models/model.onnx"), "uri"),
    ("relative-file-uri", _set("spec.model.uri", "file://model.onnx"), "uri"),
    ("pvc-uri-without-path", _set("spec.model.uri", "pvc://claim"), "uri"),
    ("missing-model-uri", _delete("spec.model.uri"), "uri"),
    ("missing-model", _delete("spec.model"), "model"),
    ("fractional-gpu", _set("spec.resources.gpu", {"count": 0.5}), "count"),
    ("negative-gpu", _set("spec.resources.gpu", {"count": -1}), "count"),
    ("gpu-count-as-string", _set("spec.resources.gpu", {"count": "1"}), "count"),
    (
        "bad-gpu-resource-name",
        _set("spec.resources.gpu", {"count": 1, "resourceName": "gpu"}),
        "resourceName",
    ),
    ("cpu-in-words", _set("spec.resources.requests", {"cpu": "2 cores"}), "cpu"),
    ("memory-gb", _set("spec.resources.limits", {"memory": "1Gb"}), "memory"),
    ("negative-memory", _set("spec.resources.requests", {"memory": "-1Gi"}), "memory"),
    ("unknown-resource", _set("spec.resources.requests", {"gpus": "1"}), "gpus"),
    ("over-long-name", _set("metadata.name", "m" * 64), "metadata.name"),
    ("name-with-dot", _set("metadata.name", "my.model"), "metadata.name"),
    ("name-starting-with-digit", _set("metadata.name", "1model"), "metadata.name"),
    ("unknown-spec-field", _set("spec.replica", 2), "replica"),
    ("unknown-nested-field", _set("spec.runtime", {"batching": {"maxBatch": 8}}), "maxBatch"),
    ("short-sha256", _set("spec.model.sha256", "abc123"), "sha256"),
    ("graph-of-a-single-file", _set("spec.model.graph", "model.onnx"), "graph"),
    (
        "custom-operators-by-path",
        _set("spec.runtime.customOperators", ["/usr/lib/libevil.so"]),
        "customOperators",
    ),
    ("cache-without-sha256", _set("spec.model.cache", {"claimName": "models"}), "cache"),
    (
        "cache-of-a-pvc-model",
        _set(
            "spec.model",
            {"uri": "pvc://claim/m.onnx", "sha256": "a" * 64, "cache": {"claimName": "c"}},
        ),
        "cache",
    ),
    (
        "cache-size-not-a-quantity",
        _set(
            "spec.model",
            {
                "uri": "s3://b/m.onnx",
                "sha256": "a" * 64,
                "cache": {"claimName": "c", "sizeLimit": "lots"},
            },
        ),
        "sizeLimit",
    ),
    (
        "graph-outside-the-model",
        _set("spec.model", {"uri": "s3://b/m.tar.gz", "graph": "../etc/model.onnx"}),
        "graph",
    ),
    ("uppercase-sha256", _set("spec.model.sha256", "A" * 64), "sha256"),
    ("zero-batch", _set("spec.runtime", {"batching": {"maxBatchSize": 0}}), "maxBatchSize"),
    (
        "unknown-provider",
        _set("spec.runtime", {"executionProviders": ["ROCMExecutionProvider"]}),
        "executionProviders",
    ),
    (
        "gpu-provider-without-gpu",
        _set("spec.runtime", {"executionProviders": ["CUDAExecutionProvider"]}),
        "executionProviders",
    ),
    (
        "gpu-with-cpu-only-provider",
        _both(
            _set("spec.runtime", {"executionProviders": ["CPUExecutionProvider"]}),
            _set("spec.resources", {"gpu": {"count": 1}}),
        ),
        "executionProviders",
    ),
    ("fallback-not-boolean", _set("spec.runtime", {"allowCpuFallback": "yes"}), "allowCpuFallback"),
    (
        "both-credentials",
        _set("spec.model.credentials", {"secretRef": {"name": "s"}, "serviceAccountName": "sa"}),
        "serviceAccountName",
    ),
    (
        "rollout-both-zero",
        _set("spec.rollout", {"maxSurge": 0, "maxUnavailable": "0%"}),
        "maxUnavailable",
    ),
    ("rollout-bad-percent", _set("spec.rollout", {"maxSurge": "150%"}), "maxSurge"),
    ("bad-metric", _set("spec.autoscaling", {"maxReplicas": 3, "metric": "gpu"}), "metric"),
    (
        "bad-toleration-effect",
        _set("spec.scheduling", {"tolerations": [{"key": "k", "effect": "Sometimes"}]}),
        "effect",
    ),
    (
        "node-selector-not-strings",
        _set("spec.scheduling", {"nodeSelector": {"gpu": True}}),
        "nodeSelector",
    ),
    # Found on a real API server: admitted by the CRD, then refused in the Deployment.
    (
        "node-selector-bad-key",
        _set("spec.scheduling", {"nodeSelector": {"bad key!": "x"}}),
        "nodeSelector",
    ),
    (
        "node-selector-bad-value",
        _set("spec.scheduling", {"nodeSelector": {"gpu": "a b"}}),
        "nodeSelector",
    ),
    (
        "toleration-exists-with-value",
        _set(
            "spec.scheduling", {"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]}
        ),
        "tolerations[0].value",
    ),
    (
        "toleration-without-key-not-exists",
        _set("spec.scheduling", {"tolerations": [{"operator": "Equal", "value": "v"}]}),
        "tolerations[0].operator",
    ),
    (
        "toleration-seconds-without-noexecute",
        _set(
            "spec.scheduling",
            {"tolerations": [{"key": "k", "effect": "NoSchedule", "tolerationSeconds": 5}]},
        ),
        "tolerations[0].tolerationSeconds",
    ),
    (
        "toleration-bad-key",
        _set("spec.scheduling", {"tolerations": [{"key": "a b", "operator": "Exists"}]}),
        "tolerations[0].key",
    ),
    (
        "priority-class-not-a-name",
        _set("spec.scheduling", {"priorityClassName": "Critical_Class"}),
        "priorityClassName",
    ),
    (
        "service-account-not-a-name",
        _set("spec.model.credentials", {"serviceAccountName": "Model Reader"}),
        "serviceAccountName",
    ),
    ("secret-not-a-name", _set("spec.model.credentials", {"secretRef": {"name": "a/b"}}), "name"),
    ("image-with-space", _set("spec.runtime", {"image": "repo/image latest"}), "image"),
]


def _mentions(problems: list[str], text: str) -> bool:
    return any(text in problem for problem in problems)


@pytest.mark.parametrize(
    ("mutate", "field"), [(m, f) for _, m, f in INVALID], ids=[case for case, _, _ in INVALID]
)
def test_invalid_resources_are_rejected_by_both(mutate: Mutation, field: str) -> None:
    obj = minimal()
    mutate(obj)

    with pytest.raises(InvalidSpecError) as rejected:
        parse_model_deployment(copy.deepcopy(obj))
    pydantic_problems = rejected.value.problems
    crd_problems = validate_against_crd(obj)

    assert _mentions(pydantic_problems, field), pydantic_problems
    assert crd_problems, "the CRD accepted what pydantic rejected"
    assert _mentions(crd_problems, field), crd_problems


def test_pydantic_messages_name_the_path_and_the_fix() -> None:
    obj = minimal(resources={"requests": {"cpu": "2 cores"}}, replicas=-1)
    with pytest.raises(InvalidSpecError) as rejected:
        parse_model_deployment(obj)
    assert sorted(rejected.value.problems) == [
        "spec.replicas: Input should be greater than or equal to 0",
        "spec.resources.requests.cpu: '2 cores' is not a Kubernetes quantity; "
        "write e.g. 500m, 2, 512Mi or 4Gi",
    ]


def test_quantities_accept_kubernetes_forms() -> None:
    for cpu in ("500m", "2", 2, "0.5", "1e3"):
        for memory in ("512Mi", "4Gi", "1G", "128974848", "129e6"):
            obj = minimal(resources={"requests": {"cpu": cpu, "memory": memory}})
            parse_model_deployment(obj)
            assert validate_against_crd(obj) == [], (cpu, memory)


def test_defaults_agree_between_pydantic_and_the_crd() -> None:
    obj = minimal(
        runtime={"batching": {}, "threads": {}, "warmup": {}},
        resources={"gpu": {}},
        autoscaling={"maxReplicas": 4},
        rollout={},
    )
    defaulted = apply_defaults(crd_schema(), copy.deepcopy(obj))
    parsed = parse_model_deployment(obj).spec.model_dump(by_alias=True, exclude_none=True)
    for section in ("runtime", "resources", "autoscaling", "rollout"):
        for key, value in defaulted["spec"][section].items():
            assert parsed[section][key] == value, (section, key)


def test_replicas_cannot_change_while_autoscaling_is_set() -> None:
    """A transition rule: `kubectl scale` on an autoscaled ModelDeployment is refused."""
    scaled = minimal(replicas=1, autoscaling={"minReplicas": 2, "maxReplicas": 8})
    rescaled = minimal(replicas=5, autoscaling={"minReplicas": 2, "maxReplicas": 8})
    problems = validate_against_crd(rescaled, old=scaled)
    assert len(problems) == 1, problems
    assert problems[0].startswith("spec.replicas: replicas cannot change while autoscaling")
    assert validate_against_crd(rescaled) == [], "a create has no old object to compare"
    for old, new in (
        (minimal(replicas=1), rescaled),  # autoscaling and replicas set in one change
        (scaled, minimal(replicas=5)),  # autoscaling removed, replicas set
        (minimal(replicas=1), minimal(replicas=5)),  # no autoscaling at all
    ):
        assert validate_against_crd(new, old=old) == [], (old["spec"], new["spec"])
