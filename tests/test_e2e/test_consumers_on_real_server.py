"""ModelConsumers on a real control plane, the operator running as the chart's
ServiceAccount: the real authorizer allows it Secrets by name only (no list or watch),
the real CRD judges bad input, the real garbage collector revokes a deleted consumer."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import yaml
from kopf.testing import KopfRunner

from modelplane_api import facts
from modelplane_api.access import key_digest, parse_access_table
from modelplane_testkit.control_plane import ApiServer
from modelplane_testkit.real_cluster import ApiRefused, RealCluster
from test_e2e.test_operator_on_real_server import _md, condition, wait_for
from test_operator.samples import SAMPLES_DIR

NS = "consumers"
Obj = dict[str, Any]


def _consumer(name: str, models: list[str], **spec: Any) -> Obj:
    return {
        "apiVersion": "modelplane.io/v1alpha1",
        "kind": "ModelConsumer",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"models": models, **spec},
    }


def _digests(admin: RealCluster, model: str, consumer: str) -> list[str]:
    config_map = admin.get("configmaps", NS, model)
    if config_map is None:
        return []
    table = parse_access_table(config_map["data"][facts.ACCESS_FILE].encode())
    return [k.sha256 for c in table.consumers if c.name == consumer for k in c.keys]


def _key(admin: RealCluster, secret: str) -> str:
    found = wait_for(lambda: admin.get("secrets", NS, secret), f"Secret {secret}")
    return base64.b64decode(found["data"]["key"]).decode()


def test_keys_grants_rotation_and_revocation_on_a_real_server(
    installed: ApiServer, admin: RealCluster, operator: KopfRunner
) -> None:
    admin.namespace(NS)
    admin.create("modeldeployments", _md(NS, "sentiment"))
    admin.create(
        "modelconsumers",
        _consumer("team-a", ["sentiment"], limits={"requestsPerSecond": 5, "burst": 10}),
    )
    key = _key(admin, "team-a-key")
    digest = key_digest(key)
    wait_for(lambda: _digests(admin, "sentiment", "team-a") == [digest], "the digest served")
    consumer = admin.get("modelconsumers", NS, "team-a")
    assert consumer is not None
    assert consumer["status"]["keys"][0]["fingerprint"] == f"sha256:{digest[:16]}"
    assert condition(consumer, "Ready")["status"] == "True"
    secret = admin.get("secrets", NS, "team-a-key")
    assert secret is not None
    assert secret["metadata"]["ownerReferences"][0]["uid"] == consumer["metadata"]["uid"]

    admin.patch("modelconsumers", NS, "team-a", {"spec": {"key": {"rotation": "2"}}})
    wait_for(
        lambda: len(_digests(admin, "sentiment", "team-a")) == 2, "both keys during the overlap"
    )
    new = key_digest(_key(admin, "team-a-key"))
    assert _digests(admin, "sentiment", "team-a") == [new, digest]

    # The key is in its Secret only.
    for plural in ("modelconsumers", "modeldeployments", "configmaps", "events"):
        assert key not in json.dumps(admin.list(plural, NS)), plural

    admin.delete("modelconsumers", NS, "team-a")
    wait_for(lambda: not _digests(admin, "sentiment", "team-a"), "the consumer revoked")
    wait_for(lambda: admin.get("secrets", NS, "team-a-key") is None, "its Secret collected")
    admin.delete("modeldeployments", NS, "sentiment")


def test_a_moved_key_overlaps_and_a_secret_deleted_by_hand_is_replaced(
    installed: ApiServer, admin: RealCluster, operator: KopfRunner
) -> None:
    admin.namespace(NS)
    admin.create("modeldeployments", _md(NS, "moving"))
    admin.create("modelconsumers", _consumer("team-m", ["moving"], key={"overlapSeconds": 60}))
    first = key_digest(_key(admin, "team-m-key"))
    wait_for(lambda: _digests(admin, "moving", "team-m") == [first], "the first key")

    moved = {"spec": {"key": {"secretName": "team-m-moved", "overlapSeconds": 60}}}
    admin.patch("modelconsumers", NS, "team-m", moved)
    second = key_digest(_key(admin, "team-m-moved"))
    wait_for(lambda: _digests(admin, "moving", "team-m") == [second, first], "both keys, moved")

    # Secrets are not watched: the operator's pass over the consumers (2 s here) sees it.
    admin.delete("secrets", NS, "team-m-moved")
    third = wait_for(
        lambda: (d := key_digest(_key(admin, "team-m-moved"))) != second and d,
        "a new key for the deleted Secret",
    )
    wait_for(lambda: _digests(admin, "moving", "team-m")[:1] == [third], "the new key served")
    assert second not in _digests(admin, "moving", "team-m")
    admin.delete("modelconsumers", NS, "team-m")
    admin.delete("modeldeployments", NS, "moving")


def test_a_taken_secret_name_and_an_unknown_model_are_reported(
    installed: ApiServer, admin: RealCluster, operator: KopfRunner
) -> None:
    admin.namespace(NS)
    theirs = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "database", "namespace": NS},
        "stringData": {"password": "hunter2"},
    }
    admin.create("secrets", theirs)
    admin.create("modelconsumers", _consumer("squatter", ["*"], key={"secretName": "database"}))
    admin.create("modelconsumers", _consumer("early", ["not-yet"]))

    def reason(name: str, wanted: str) -> Obj | None:
        ready = condition(admin.get("modelconsumers", NS, name), "Ready")
        return ready if ready.get("reason") == wanted else None

    wait_for(lambda: reason("squatter", "KeySecretNotOwned"), "KeySecretNotOwned")
    wait_for(lambda: reason("early", "ModelNotFound"), "ModelNotFound")

    def warned() -> set[tuple[str, str]]:
        events = admin.list("events", NS)
        return {
            (e["involvedObject"]["name"], e["reason"]) for e in events if e["type"] == "Warning"
        }

    # The event is posted just after the status is written.
    wanted = {("squatter", "KeySecretNotOwned"), ("early", "ModelNotFound")}
    wait_for(lambda: wanted <= warned(), "both Warning events")
    database = admin.get("secrets", NS, "database")
    assert database is not None
    assert base64.b64decode(database["data"]["password"]) == b"hunter2"
    assert "ownerReferences" not in database["metadata"]
    for name in ("squatter", "early"):
        admin.delete("modelconsumers", NS, name)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"models": ["m"], "limits": {"requestsPerSecond": 0}}, "requestsPerSecond"),
        ({"models": ["m"], "limits": {"requestsPerSecond": -3}}, "requestsPerSecond"),
        ({"models": ["m"], "limits": {"requestsPerSecond": "10"}}, "requestsPerSecond"),
        ({"models": ["*", "m"]}, "models"),
        ({"models": ["m"], "key": {"overlapSeconds": 999999999}}, "overlapSeconds"),
    ],
)
def test_the_real_crd_refuses_bad_consumers(
    installed: ApiServer, admin: RealCluster, spec: Obj, field: str
) -> None:
    admin.namespace(NS)
    obj = _consumer("bad", [])
    obj["spec"] = spec
    with pytest.raises(ApiRefused) as refused:
        admin.create("modelconsumers", obj)
    assert refused.value.status == 422
    assert field in json.dumps(refused.value.body)


def test_the_real_crd_refuses_an_over_long_consumer_name(
    installed: ApiServer, admin: RealCluster
) -> None:
    admin.namespace(NS)
    obj = _consumer("a" * 64, ["m"])
    with pytest.raises(ApiRefused) as refused:
        admin.create("modelconsumers", obj)
    assert refused.value.status == 422
    assert "metadata.name" in json.dumps(refused.value.body)


def test_the_consumer_samples_are_accepted(installed: ApiServer, admin: RealCluster) -> None:
    admin.namespace("models")
    samples = sorted((SAMPLES_DIR / "consumers").glob("*.yaml"))
    assert samples
    for path in samples:
        sample = yaml.safe_load(path.read_text())
        created = admin.create("modelconsumers", sample)
        assert created["spec"]["models"] == sample["spec"]["models"]
        admin.delete("modelconsumers", "models", sample["metadata"]["name"])
