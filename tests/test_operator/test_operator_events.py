"""Warning events aggregate as client-go's recorder does: one Event per object, reason and
message, its count and lastTimestamp updated, within a rate limit per object. Real kopf
against the emulator for the operator's own path; the recorder itself over real HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests

from modelplane_operator.kube import KubeApi, load_client
from modelplane_testkit.operator_harness import (
    Cluster,
    condition,
    observed_generation,
    start_emulator,
    wait_for,
    write_kubeconfig,
)
from test_operator.samples import minimal

NS = "models"


def _warnings(cluster: Cluster, reason: str) -> list[dict[str, Any]]:
    return [
        e
        for e in cluster.list("events")
        if e.get("type") == "Warning" and e.get("reason") == reason
    ]


def test_a_problem_that_persists_across_reconciles_is_one_event_counting_up(
    cluster: Cluster,
) -> None:
    """An invalid spec edited without being fixed: each edit is a reconcile that reports
    the same problem again (a new generation, so a new status), and each report counts
    on the one Event."""
    invalid = minimal(replicas=-3)
    invalid["metadata"] = {"name": "demo", "namespace": NS}
    cluster.create("modeldeployments", invalid)
    first = wait_for(lambda: _warnings(cluster, "InvalidSpec"), "the first Warning event")
    assert len(first) == 1
    assert first[0]["count"] == 1
    assert "spec.replicas" in first[0]["message"]

    for generation, threads in ((2, 1), (3, 2)):  # still invalid: replicas stay -3
        cluster.patch(
            "modeldeployments", NS, "demo", {"spec": {"runtime": {"threads": {"intraOp": threads}}}}
        )

        def observed(generation: int = generation) -> bool:
            md = cluster.get("modeldeployments", NS, "demo")
            return observed_generation(md) == generation

        def counted(generation: int = generation) -> list[dict[str, Any]]:
            return [e for e in _warnings(cluster, "InvalidSpec") if e["count"] == generation]

        wait_for(observed, f"the status of generation {generation}")
        wait_for(counted, f"the Event counting {generation}")
    events = _warnings(cluster, "InvalidSpec")
    assert len(events) == 1, events
    assert events[0]["count"] == 3
    assert events[0]["lastTimestamp"] >= events[0]["firstTimestamp"]
    ready = condition(cluster.get("modeldeployments", NS, "demo"), "Ready")
    assert ready["reason"] == "InvalidSpec"


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    with start_emulator() as emulator:
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", emulator.url)
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        yield emulator, lambda: KubeApi(load_client())


def _consumer(uid: str = "u-1") -> dict[str, Any]:
    return {
        "apiVersion": "modelplane.io/v1alpha1",
        "kind": "ModelConsumer",
        "metadata": {"name": "team-a", "namespace": NS, "uid": uid},
    }


def _events(emulator: Any) -> list[dict[str, Any]]:
    return list(emulator.run(emulator.emulator.all_of, "events"))


def test_a_restarted_operator_counts_on_the_event_it_posted(api: Any) -> None:
    emulator, new_api = api
    new_api().warn(_consumer(), "KeySecretNotOwned", "the Secret team-a-key is not ours")
    # A new process: nothing remembered, but the Event is found by its name.
    restarted = new_api()
    restarted.warn(_consumer(), "KeySecretNotOwned", "the Secret team-a-key is not ours")
    restarted.warn(_consumer(), "KeySecretNotOwned", "the Secret team-a-key is not ours")
    events = _events(emulator)
    assert [(e["reason"], e["count"]) for e in events] == [("KeySecretNotOwned", 3)]
    assert events[0]["involvedObject"]["kind"] == "ModelConsumer"

    # Another message, or another object (a new uid: recreated), is another Event.
    restarted.warn(_consumer(), "KeySecretNotOwned", "the Secret team-b-key is not ours")
    restarted.warn(_consumer("u-2"), "KeySecretNotOwned", "the Secret team-a-key is not ours")
    assert sorted(e["count"] for e in _events(emulator)) == [1, 1, 3]


def test_an_event_that_expired_is_posted_again(api: Any) -> None:
    emulator, new_api = api
    kube = new_api()
    kube.warn(_consumer(), "Forbidden", "no")
    (event,) = _events(emulator)
    name = event["metadata"]["name"]
    gone = requests.delete(f"{emulator.url}/api/v1/namespaces/{NS}/events/{name}", timeout=10)
    assert gone.ok  # as the API server does after its event TTL (1 h by default)
    kube.warn(_consumer(), "Forbidden", "no")
    assert [e["count"] for e in _events(emulator)] == [1]


def test_one_object_posts_at_most_a_burst_then_one_per_refill(api: Any) -> None:
    emulator, new_api = api
    kube = new_api()
    now = [0.0]
    kube.events.clock = lambda: now[0]
    for number in range(kube.events.BURST + 5):
        kube.warn(_consumer(), "ChildRejected", f"problem {number}")
    assert len(_events(emulator)) == kube.events.BURST
    now[0] += kube.events.REFILL_SECONDS  # one more token
    kube.warn(_consumer(), "ChildRejected", "problem 0")  # a repeat takes a token too
    kube.warn(_consumer(), "ChildRejected", "problem 1")
    counts = sorted(e["count"] for e in _events(emulator))
    assert counts == [1] * (kube.events.BURST - 1) + [2]
    # The limit is per object: another one is not held back.
    kube.warn(_consumer("u-2"), "ChildRejected", "problem 0")
    assert len(_events(emulator)) == kube.events.BURST + 1
