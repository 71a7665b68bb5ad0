"""ModelConsumers through the real operator: keys into Secrets, rotation, revocation, the
restricted models' access descriptions, and what a user must fix reported in status and
Warning events, with no key text anywhere but the key's Secret."""

from __future__ import annotations

import base64
import datetime
import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from kopf.testing import KopfRunner

from modelplane_api import facts
from modelplane_api.access import key_digest, parse_access_table
from modelplane_testkit import onnx_models
from modelplane_testkit.kube_emulator import ACCESS_LOG, Fault
from modelplane_testkit.mounted import AccessDir
from modelplane_testkit.operator_harness import (
    Cluster,
    condition,
    running_operator,
    start_emulator,
    wait_for,
    wait_until_watching,
)
from modelplane_testkit.runtime_server import RuntimeServer
from test_operator.samples import minimal

NS = "models"
WAIT = 15.0


@contextmanager
def _operator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Cluster, KopfRunner]]:
    since = len(ACCESS_LOG)
    with start_emulator() as emulator, running_operator(tmp_path, monkeypatch, emulator) as runner:
        wait_until_watching("modeldeployments", since)
        wait_until_watching("modelconsumers", since)
        yield Cluster(emulator), runner


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    with _operator(tmp_path, monkeypatch) as (cluster, _):
        yield cluster


def _md(name: str, **spec: Any) -> dict[str, Any]:
    obj = minimal(**spec)
    obj["metadata"] = {"name": name, "namespace": NS}
    return obj


def _consumer(name: str, models: list[str], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "modelplane.io/v1alpha1",
        "kind": "ModelConsumer",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"models": models, **spec},
    }


def _key(cluster: Cluster, secret: str) -> str:
    found = wait_for(lambda: cluster.get("secrets", NS, secret), f"Secret {secret}", WAIT)
    return base64.b64decode(found["data"]["key"]).decode()


def _table(cluster: Cluster, model: str) -> dict[str, Any]:
    config_map = cluster.get("configmaps", NS, model)
    if config_map is None:
        return {}
    table = parse_access_table(config_map["data"][facts.ACCESS_FILE].encode())
    return table.model_dump(mode="json", by_alias=True, exclude_none=True)


def _digests(table: dict[str, Any], consumer: str) -> list[str]:
    for entry in table.get("consumers", []):
        if entry["name"] == consumer:
            return [k["sha256"] for k in entry["keys"]]
    return []


def _first_key_served(cluster: Cluster, models: list[str], **spec: Any) -> str:
    """Model "sentiment" and its consumer "team-a": the digest of the consumer's first key,
    once the model's access description lists it."""
    cluster.create("modeldeployments", _md("sentiment"))
    cluster.create("modelconsumers", _consumer("team-a", models, **spec))
    first = key_digest(_key(cluster, "team-a-key"))
    wait_for(
        lambda: _digests(_table(cluster, "sentiment"), "team-a") == [first], "the first key", WAIT
    )
    return first


def _ready(cluster: Cluster, plural: str, name: str) -> dict[str, Any]:
    return condition(cluster.get(plural, NS, name), "Ready")


def _warnings(cluster: Cluster, name: str) -> list[dict[str, Any]]:
    return [
        e
        for e in cluster.list("events")
        if e["involvedObject"]["name"] == name and e["type"] == "Warning"
    ]


def test_a_consumer_gets_a_key_and_the_restricted_model_lists_its_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _operator(tmp_path, monkeypatch) as (cluster, runner):
        key = _consumer_served(cluster)
    # The operator's whole log, read once it has stopped.
    assert key not in runner.output
    assert "team-a-key" in runner.output  # the log does say where the key went


def _consumer_served(cluster: Cluster) -> str:
    cluster.create("modeldeployments", _md("sentiment"))
    limits = {"requestsPerSecond": 20, "burst": 40, "rowsPerSecond": 500}
    cluster.create("modelconsumers", _consumer("team-a", ["sentiment"], limits=limits))
    key = _key(cluster, "team-a-key")
    digest = key_digest(key)
    assert key.startswith("mp_")
    assert len(key) >= 43  # 256 random bits, URL-safe

    status = wait_for(
        lambda: (
            (cluster.get("modelconsumers", NS, "team-a") or {}).get("status", {}).get("keys")
            and cluster.get("modelconsumers", NS, "team-a")
        ),
        "the consumer's status",
        WAIT,
    )["status"]
    assert status["keys"] == [{"fingerprint": f"sha256:{digest[:16]}", "sha256": digest}]
    assert status["models"] == ["sentiment"]
    assert status["keySecretName"] == "team-a-key"
    assert _ready(cluster, "modelconsumers", "team-a")["status"] == "True"

    wait_for(
        lambda: _digests(_table(cluster, "sentiment"), "team-a"), "the access description", WAIT
    )
    (entry,) = _table(cluster, "sentiment")["consumers"]
    assert entry == {
        "name": "team-a",
        "models": ["sentiment"],
        "keys": [{"sha256": digest}],
        "limits": {"requestsPerSecond": 20.0, "burst": 40, "rowsPerSecond": 500.0},
    }
    secret = cluster.get("secrets", NS, "team-a-key")
    assert secret is not None
    (owner,) = secret["metadata"]["ownerReferences"]
    assert owner["kind"] == "ModelConsumer"
    assert owner["controller"] is True

    # The pods mount the access description and the runtime is told where it is.
    pod = (cluster.get("deployments", NS, "sentiment") or {})["spec"]["template"]["spec"]
    assert {"name": "access", "configMap": {"name": "sentiment"}} in pod["volumes"]
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    assert env["MODELPLANE_ACCESS_FILE"] == f"{facts.ACCESS_DIR}/{facts.ACCESS_FILE}"

    # The key is in its Secret and nowhere else: not in any other object, nor the log.
    for plural in ("modelconsumers", "modeldeployments", "configmaps", "deployments", "events"):
        assert key not in json.dumps(cluster.list(plural)), plural
    return key


def test_the_access_description_follows_the_replica_count(cluster: Cluster) -> None:
    cluster.create("modeldeployments", _md("fixed", replicas=3))
    wait_for(lambda: _table(cluster, "fixed").get("replicas") == 3, "3 replicas", WAIT)
    cluster.create(
        "modeldeployments", _md("scaled", autoscaling={"minReplicas": 2, "maxReplicas": 8})
    )
    wait_for(lambda: cluster.get("deployments", NS, "scaled"), "the Deployment", WAIT)
    # The HPA scales the Deployment; each replica's share follows.
    cluster.patch(
        "deployments", NS, "scaled", {"spec": {"replicas": 5}}, manager="horizontal-pod-autoscaler"
    )
    wait_for(lambda: _table(cluster, "scaled").get("replicas") == 5, "the HPA's 5", WAIT)


def test_rotation_keeps_the_old_key_for_the_overlap_then_drops_it(
    cluster: Cluster,
) -> None:
    old = _first_key_served(cluster, ["*"], key={"overlapSeconds": 3})

    rotated_at = datetime.datetime.now(datetime.UTC)
    cluster.patch("modelconsumers", NS, "team-a", {"spec": {"key": {"rotation": "2"}}})
    new = wait_for(
        lambda: (d := key_digest(_key(cluster, "team-a-key"))) != old and d,
        "a new key",
        WAIT,
    )
    wait_for(
        lambda: _digests(_table(cluster, "sentiment"), "team-a") == [new, old],
        "both keys during the overlap",
        WAIT,
    )
    keys = (cluster.get("modelconsumers", NS, "team-a") or {})["status"]["keys"]
    until = datetime.datetime.fromisoformat(keys[1]["notAfter"])
    assert abs((until - rotated_at).total_seconds() - 3) < 3
    assert "notAfter" not in keys[0]
    # After the overlap the operator comes back by itself and the old key is gone.
    wait_for(
        lambda: _digests(_table(cluster, "sentiment"), "team-a") == [new],
        "the old key dropped",
        WAIT,
    )
    assert len((cluster.get("modelconsumers", NS, "team-a") or {})["status"]["keys"]) == 1


def test_a_key_moved_to_another_secret_keeps_the_old_one_for_the_overlap(
    cluster: Cluster,
) -> None:
    old = _first_key_served(cluster, ["*"], key={"overlapSeconds": 3})
    moved = {"spec": {"key": {"secretName": "team-a-moved", "overlapSeconds": 3}}}
    cluster.patch("modelconsumers", NS, "team-a", moved)
    new = key_digest(_key(cluster, "team-a-moved"))
    assert new != old
    wait_for(
        lambda: _digests(_table(cluster, "sentiment"), "team-a") == [new, old],
        "both keys during the overlap",
        WAIT,
    )
    status = (cluster.get("modelconsumers", NS, "team-a") or {})["status"]
    assert status["keySecretName"] == "team-a-moved"
    assert "notAfter" in status["keys"][1]
    wait_for(
        lambda: _digests(_table(cluster, "sentiment"), "team-a") == [new],
        "the old key dropped",
        WAIT,
    )
    assert cluster.get("secrets", NS, "team-a-key") is not None  # owned; goes with the consumer


def test_a_key_secret_deleted_by_hand_is_replaced_and_its_key_stops_working(
    cluster: Cluster,
) -> None:
    # The operator does not watch Secrets: its pass over the consumers (every 2 s here,
    # MODELPLANE_OPERATOR_KEY_RECHECK_SECONDS) is what notices.
    old = _first_key_served(cluster, ["sentiment"])
    cluster.delete("secrets", NS, "team-a-key")
    new = wait_for(
        lambda: (d := key_digest(_key(cluster, "team-a-key"))) != old and d,
        "a new key in a new Secret",
        WAIT,
    )
    wait_for(
        lambda: _digests(_table(cluster, "sentiment"), "team-a") == [new],
        "only the new key works",
        WAIT,
    )


def test_a_child_refused_after_a_consumer_came_is_a_warning_event_too(
    cluster: Cluster,
) -> None:
    # Not the model's own spec handler: the consumer's event re-renders the model's access
    # ConfigMap, and the API server refuses it. The status and a Warning event say so.
    cluster.create("modeldeployments", _md("sentiment"))
    wait_for(lambda: cluster.get("configmaps", NS, "sentiment"), "the access ConfigMap", WAIT)
    refuse = Fault("PATCH", re.compile(r"/configmaps/sentiment\b"), 422, times=1000)
    cluster.emulator.emulator.faults.append(refuse)
    try:
        cluster.create("modelconsumers", _consumer("team-a", ["sentiment"]))
        wait_for(
            lambda: (
                _ready(cluster, "modeldeployments", "sentiment").get("reason") == "ChildRejected"
            ),
            "Ready=False/ChildRejected",
            WAIT,
        )
        (event,) = wait_for(lambda: _warnings(cluster, "sentiment"), "a Warning event", WAIT)
    finally:
        refuse.times = 0
    assert event["reason"] == "ChildRejected"
    assert event["involvedObject"]["kind"] == "ModelDeployment"


def test_deleting_the_consumer_revokes_its_key(cluster: Cluster) -> None:
    cluster.create("modeldeployments", _md("sentiment"))
    cluster.create("modelconsumers", _consumer("team-a", ["sentiment"]))
    cluster.create("modelconsumers", _consumer("team-b", ["sentiment"]))
    wait_for(
        lambda: len(_table(cluster, "sentiment").get("consumers", [])) == 2, "two consumers", WAIT
    )
    cluster.delete("modelconsumers", NS, "team-a")
    wait_for(
        lambda: [c["name"] for c in _table(cluster, "sentiment")["consumers"]] == ["team-b"],
        "team-a revoked",
        WAIT,
    )
    wait_for(lambda: cluster.get("secrets", NS, "team-a-key") is None, "its Secret collected", WAIT)


def test_a_grant_for_a_model_that_does_not_exist_is_reported_until_it_does(
    cluster: Cluster,
) -> None:
    cluster.create("modelconsumers", _consumer("early", ["later"]))
    ready = wait_for(
        lambda: (
            _ready(cluster, "modelconsumers", "early").get("reason") == "ModelNotFound"
            and _ready(cluster, "modelconsumers", "early")
        ),
        "ModelNotFound",
        WAIT,
    )
    assert ready["status"] == "False"
    assert "later" in ready["message"]
    assert "spec.models" in ready["message"]
    assert condition(cluster.get("modelconsumers", NS, "early"), "Stalled")["status"] == "True"
    (event,) = wait_for(lambda: _warnings(cluster, "early"), "a Warning event", WAIT)
    assert event["reason"] == "ModelNotFound"
    # The consumer is valid: its key exists, and takes effect once the model does.
    digest = key_digest(_key(cluster, "early-key"))
    cluster.create("modeldeployments", _md("later"))
    wait_for(
        lambda: _ready(cluster, "modelconsumers", "early").get("status") == "True",
        "Ready once the model exists",
        WAIT,
    )
    assert (cluster.get("modelconsumers", NS, "early") or {})["status"]["models"] == ["later"]
    wait_for(
        lambda: _digests(_table(cluster, "later"), "early") == [digest], "the grant in effect", WAIT
    )


def test_a_key_secret_name_taken_by_another_secret_is_never_written(
    cluster: Cluster,
) -> None:
    theirs = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "database", "namespace": NS},
        "data": {"password": base64.b64encode(b"hunter2").decode()},
    }
    cluster.create("secrets", theirs)
    cluster.create("modeldeployments", _md("sentiment"))
    cluster.create(
        "modelconsumers", _consumer("team-a", ["sentiment"], key={"secretName": "database"})
    )
    ready = wait_for(
        lambda: (
            _ready(cluster, "modelconsumers", "team-a").get("reason") == "KeySecretNotOwned"
            and _ready(cluster, "modelconsumers", "team-a")
        ),
        "KeySecretNotOwned",
        WAIT,
    )
    assert "spec.key.secretName" in ready["message"]
    (event,) = wait_for(lambda: _warnings(cluster, "team-a"), "a Warning event", WAIT)
    assert event["reason"] == "KeySecretNotOwned"
    after = cluster.get("secrets", NS, "database")
    assert after is not None
    assert after["data"] == theirs["data"]
    assert after["metadata"].get("ownerReferences") is None
    assert (cluster.get("modelconsumers", NS, "team-a") or {})["status"].get("keys", []) == []
    assert _digests(_table(cluster, "sentiment"), "team-a") == []


def test_an_open_model_has_no_access_description(cluster: Cluster) -> None:
    cluster.create("modeldeployments", _md("public", access={"mode": "Open"}))
    cluster.create("modeldeployments", _md("private"))
    wait_for(lambda: cluster.get("configmaps", NS, "private"), "the restricted model's", WAIT)
    pod = wait_for(lambda: cluster.get("deployments", NS, "public"), "the open Deployment", WAIT)
    assert cluster.get("configmaps", NS, "public") is None
    env = {e["name"] for e in pod["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "MODELPLANE_ACCESS_FILE" not in env
    # Opening a restricted model removes its access description.
    cluster.patch("modeldeployments", NS, "private", {"spec": {"access": {"mode": "Open"}}})
    wait_for(
        lambda: cluster.get("configmaps", NS, "private") is None, "the ConfigMap deleted", WAIT
    )


def _published(cluster: Cluster, mounted: AccessDir, model: str, check: Any, what: str) -> None:
    """Wait for the operator's access description to satisfy ``check``, then hand it to
    the runtime the way the kubelet does (an atomic swap of the mounted files)."""
    wait_for(lambda: check(_table(cluster, model)), what, WAIT)
    config_map = cluster.get("configmaps", NS, model) or {}
    mounted.publish(config_map["data"][facts.ACCESS_FILE])


def _infer(server: RuntimeServer, key: str | None) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    status: int = server.post("/v2/models/relu/infer", json=body, headers=headers).status_code
    return status


def _eventually_status(server: RuntimeServer, key: str | None, wanted: int) -> None:
    wait_for(lambda: _infer(server, key) == wanted, f"{wanted} for that key", WAIT)


def test_the_runtime_enforces_what_the_operator_wrote(cluster: Cluster, tmp_path: Path) -> None:
    """The whole path but the kubelet: ModelConsumers -> operator -> ConfigMap -> mounted
    file -> real runtime over real HTTP, with keys read from the operator's Secrets."""
    cluster.create("modeldeployments", _md("relu"))
    cluster.create(
        "modelconsumers",
        _consumer("granted", ["relu"], limits={"requestsPerSecond": 1, "burst": 2}),
    )
    cluster.create("modelconsumers", _consumer("elsewhere", ["other-model"]))
    granted, elsewhere = _key(cluster, "granted-key"), _key(cluster, "elsewhere-key")
    mounted = AccessDir(tmp_path / "access")
    _published(
        cluster,
        mounted,
        "relu",
        lambda t: len(t.get("consumers", [])) == 2,
        "both consumers in the access description",
    )
    model = onnx_models.relu_and_double(tmp_path / "relu.onnx")
    args = ["--model", str(model), "--access", str(mounted.file)]
    with RuntimeServer(args, log_dir=tmp_path) as server:
        assert _infer(server, None) == 401
        assert _infer(server, granted) == 200
        assert _infer(server, elsewhere) == 403  # a valid key, not granted this model
        codes = [_infer(server, granted) for _ in range(4)]
        assert 429 in codes  # burst 2 at 1 per second

        # Rotation: the new key works at once, the old one still does (the overlap).
        old = granted
        cluster.patch("modelconsumers", NS, "granted", {"spec": {"key": {"rotation": "2"}}})
        wait_for(lambda: _key(cluster, "granted-key") != old, "the new key", WAIT)
        new = _key(cluster, "granted-key")
        _published(
            cluster,
            mounted,
            "relu",
            lambda t: len(_digests(t, "granted")) == 2,
            "both keys of the rotation",
        )
        time.sleep(2.0)  # the bucket refills
        _eventually_status(server, new, 200)
        time.sleep(1.0)
        assert _infer(server, old) == 200

        # Revocation: deleting the ModelConsumer stops both its keys.
        cluster.delete("modelconsumers", NS, "granted")
        _published(
            cluster,
            mounted,
            "relu",
            lambda t: not _digests(t, "granted"),
            "the consumer revoked",
        )
        _eventually_status(server, new, 401)
        assert _infer(server, old) == 401
        assert _infer(server, elsewhere) == 403

        # A consumer added while the model serves: no restart.
        cluster.create("modelconsumers", _consumer("late", ["relu"]))
        late = _key(cluster, "late-key")
        _published(cluster, mounted, "relu", lambda t: _digests(t, "late"), "the late consumer")
        _eventually_status(server, late, 200)


def test_a_field_dropped_from_the_spec_leaves_the_status(cluster: Cluster) -> None:
    cluster.create("modelconsumers", _consumer("team-a", ["*"], key={"rotation": "r1"}))
    wait_for(
        lambda: (
            (cluster.get("modelconsumers", NS, "team-a") or {}).get("status", {}).get("rotation")
            == "r1"
        ),
        "the rotation in status",
        WAIT,
    )
    first = key_digest(_key(cluster, "team-a-key"))
    cluster.patch("modelconsumers", NS, "team-a", {"spec": {"key": {"rotation": None}}})
    wait_for(
        lambda: "rotation" not in (cluster.get("modelconsumers", NS, "team-a") or {})["status"],
        "the rotation gone from status",
        WAIT,
    )
    # Unsetting the rotation is a change of it: a new key, the old one in its overlap.
    keys = (cluster.get("modelconsumers", NS, "team-a") or {})["status"]["keys"]
    assert [k["sha256"] for k in keys][1:] == [first]
