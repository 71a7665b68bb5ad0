"""Keys, grants, limits and metering, through the real server over real HTTP.

The access file is published the way the kubelet updates a mounted Secret: files in
a timestamped directory, ``..data`` a symlink to it, swapped by a rename.
"""

from __future__ import annotations

import datetime
import hashlib
import itertools
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from modelplane_api import facts
from modelplane_api.access import MAX_CONSUMERS, MAX_KEYS_PER_CONSUMER, key_digest, new_key
from modelplane_testkit.mounted import AccessDir
from modelplane_testkit.runtime_server import PROBE_PATHS, RuntimeServer, run_runtime_cli

# Longest wait for a published change to be served: the runtime's re-read interval, and
# slack for a busy machine (the bound itself is ACCESS_RELOAD_SECONDS).
PICKUP_DEADLINE = facts.ACCESS_RELOAD_SECONDS + 9

KEYS = {name: new_key() for name in ("alpha", "beta", "slow", "rows", "meter", "rotate")}
ROTATED = new_key()
LATE = new_key()


def _consumer(
    name: str, models: list[str], limits: dict[str, Any] | None = None, **more: Any
) -> dict[str, Any]:
    consumer: dict[str, Any] = {"name": name, "models": models}
    consumer["keys"] = more.get("keys") or [{"sha256": key_digest(KEYS[name])}]
    if limits:
        consumer["limits"] = limits
    return consumer


BASE_CONSUMERS = [
    _consumer("alpha", ["relu"]),
    _consumer("beta", ["another-model"]),
    _consumer("slow", ["*"], {"requestsPerSecond": 0.5, "burst": 2}),
    _consumer("rows", ["relu"], {"requestsPerSecond": 1000, "burst": 1000, "rowsPerSecond": 4}),
    _consumer("meter", ["relu"]),
    _consumer("rotate", ["relu"]),
]


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _rows(count: int) -> dict[str, Any]:
    data = np.arange(count * 4, dtype=np.float32) - 3
    return {
        "inputs": [{"name": "x", "shape": [count, 4], "datatype": "FP32", "data": data.tolist()}]
    }


def _infer(server: RuntimeServer, key: str | None, rows: int = 1) -> requests.Response:
    headers = _bearer(key) if key else {}
    return server.post("/v2/models/relu/infer", json=_rows(rows), headers=headers)


def _eventually(check: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + PICKUP_DEADLINE
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def access(tmp_path_factory: pytest.TempPathFactory) -> AccessDir:
    folder = AccessDir(tmp_path_factory.mktemp("access") / "mounted")
    folder.publish({"consumers": BASE_CONSUMERS})
    return folder


@pytest.fixture(scope="module")
def server(models: dict[str, Path], logs: Path, access: AccessDir) -> Iterator[RuntimeServer]:
    args = ["--model", str(models["relu"]), "--access", str(access.file)]
    with RuntimeServer(args, log_dir=logs) as running:
        yield running


def test_a_request_without_a_valid_key_is_401_with_a_bearer_challenge(
    server: RuntimeServer,
) -> None:
    missing = _infer(server, None)
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"] == 'Bearer realm="modelplane"'
    assert "Authorization: Bearer" in missing.json()["error"]

    unknown = _infer(server, new_key())
    assert unknown.status_code == 401
    assert 'error="invalid_token"' in unknown.headers["WWW-Authenticate"]

    basic = server.post(
        "/v2/models/relu/infer", json=_rows(1), headers={"Authorization": "Basic eDp5"}
    )
    assert basic.status_code == 401
    assert 'error="invalid_request"' in basic.headers["WWW-Authenticate"]
    assert server.metric("modelplane_access_refused_total", model="relu", reason="unknown_key") >= 1


@pytest.mark.parametrize(
    ("header", "status", "reason"),
    [
        (f"bearer {KEYS['alpha']}", 200, None),  # RFC 6750: the scheme is case-insensitive
        (f"BEARER {KEYS['alpha']}", 200, None),
        (f"Bearer {KEYS['alpha']} extra", 401, "malformed"),
        (f"Bearer  {KEYS['alpha']}", 401, "malformed"),
        (f"Bearer {KEYS['alpha']}x", 401, "unknown_key"),
        ("Bearer " + "k" * 600, 401, "malformed"),  # over the bound: refused unhashed
        (f"Bearer {KEYS['alpha'][:-1]}\xe9", 401, "malformed"),
        ("Bearer", 401, "malformed"),
    ],
)
def test_the_authorization_header_is_read_strictly(
    server: RuntimeServer, header: str, status: int, reason: str | None
) -> None:
    before = server.metric("modelplane_access_refused_total", model="relu", reason=reason or "")
    answer = server.post(
        "/v2/models/relu/infer",
        json=_rows(1),
        headers={"Authorization": header.encode("latin-1")},
    )
    assert answer.status_code == status, answer.text
    if reason is not None:
        expected = "invalid_request" if reason == "malformed" else "invalid_token"
        assert f'error="{expected}"' in answer.headers["WWW-Authenticate"]
        after = server.metric("modelplane_access_refused_total", model="relu", reason=reason)
        assert after == before + 1
    assert server.get(facts.LIVE_PATH).status_code == 200


def test_probes_and_metrics_need_no_key_but_metadata_does(server: RuntimeServer) -> None:
    for path in (facts.LIVE_PATH, facts.READY_PATH, facts.METRICS_PATH):
        assert server.get(path).status_code == 200, path
    assert server.get("/v2/models/relu").status_code == 401
    assert server.get("/v2").status_code == 401
    metadata = server.get("/v2/models/relu", headers=_bearer(KEYS["alpha"]))
    assert metadata.status_code == 200
    assert metadata.json()["name"] == "relu"


def test_a_granted_key_gets_its_answer(server: RuntimeServer) -> None:
    answer = _infer(server, KEYS["alpha"], rows=2)
    assert answer.status_code == 200, answer.text
    relu = answer.json()["outputs"][0]
    assert relu["data"] == np.maximum(np.arange(8, dtype=np.float32) - 3, 0).tolist()


def test_a_valid_key_not_granted_this_model_is_403(server: RuntimeServer) -> None:
    refused = _infer(server, KEYS["beta"])
    assert refused.status_code == 403
    assert "'beta' is not granted model 'relu'" in refused.json()["error"]
    assert (
        server.metric(
            "modelplane_consumer_requests_total", model="relu", consumer="beta", outcome="403"
        )
        == 1
    )


def test_over_the_request_rate_is_429_with_the_seconds_until_a_request_fits(
    server: RuntimeServer,
) -> None:
    # 0.5 requests/s, burst 2: two pass at once, the third must wait two seconds.
    assert [_infer(server, KEYS["slow"]).status_code for _ in range(2)] == [200, 200]
    limited = _infer(server, KEYS["slow"])
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "2"
    assert "over its request rate" in limited.json()["error"]
    time.sleep(int(limited.headers["Retry-After"]))
    assert _infer(server, KEYS["slow"]).status_code == 200


def test_over_the_row_rate_is_429(server: RuntimeServer) -> None:
    # 4 rows/s (at most a second's worth at once): 3 rows pass, 3 more must wait.
    assert _infer(server, KEYS["rows"], rows=3).status_code == 200
    limited = _infer(server, KEYS["rows"], rows=3)
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "1"
    assert "this request has 3 rows" in limited.json()["error"]


def test_usage_counters_are_exact_for_a_known_sequence(server: RuntimeServer) -> None:
    bodies = [json.dumps(_rows(n)).encode() for n in (1, 2, 3)]
    answers = [
        server.post("/v2/models/relu/infer", data=body, headers=_bearer(KEYS["meter"]))
        for body in bodies
    ]
    assert [a.status_code for a in answers] == [200, 200, 200]
    bad = b'{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2]}]}'
    assert (
        server.post("/v2/models/relu/infer", data=bad, headers=_bearer(KEYS["meter"])).status_code
        == 400
    )

    def count(metric: str, **labels: str) -> float:
        return server.metric(metric, model="relu", consumer="meter", **labels)

    assert count("modelplane_consumer_requests_total", outcome="success") == 3
    assert count("modelplane_consumer_requests_total", outcome="400") == 1
    assert count("modelplane_consumer_rows_total") == 6
    assert count("modelplane_consumer_request_bytes_total") == sum(map(len, bodies)) + len(bad)
    assert count("modelplane_consumer_response_bytes_total") == sum(len(a.content) for a in answers)
    assert count("modelplane_consumer_compute_seconds_total") > 0


def test_tritonclient_sends_the_key_unchanged(server: RuntimeServer) -> None:
    client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    try:
        x = triton.InferInput("x", [1, 4], "FP32")
        x.set_data_from_numpy(np.array([[-1, 0, 1, 2]], dtype=np.float32))
        result = client.infer("relu", [x], headers=_bearer(KEYS["alpha"]))
        assert result.as_numpy("relu").tolist() == [[0, 0, 1, 2]]
        with pytest.raises(InferenceServerException, match="needs a key"):
            client.infer("relu", [x])
    finally:
        client.close()


def test_rotation_overlap_revocation_and_a_consumer_added_while_serving(
    server: RuntimeServer, access: AccessDir
) -> None:
    old, new = KEYS["rotate"], ROTATED
    assert _infer(server, old).status_code == 200
    assert _infer(server, new).status_code == 401
    overlap_ends = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=4)
    rotated = _consumer(
        "rotate",
        ["relu"],
        keys=[
            {"sha256": key_digest(new)},
            {"sha256": key_digest(old), "notAfter": overlap_ends.isoformat()},
        ],
    )
    late = _consumer("late", ["relu"], keys=[{"sha256": key_digest(LATE)}])
    others = [c for c in BASE_CONSUMERS if c["name"] != "rotate"]
    access.publish({"consumers": [*others, rotated, late]})

    assert _eventually(lambda: _infer(server, new).status_code == 200), (
        "the new key was not picked up"
    )
    assert _infer(server, LATE).status_code == 200  # the consumer added meanwhile
    assert _infer(server, old).status_code == 200  # inside the overlap, the old key still works
    time.sleep(max(0.0, (overlap_ends - datetime.datetime.now(datetime.UTC)).total_seconds()) + 0.2)
    expired = _infer(server, old)
    assert expired.status_code == 401
    assert "rotated out" in expired.json()["error"]

    access.publish({"consumers": [*others, rotated]})  # "late" revoked
    assert _eventually(lambda: _infer(server, LATE).status_code == 401), (
        "revocation was not picked up"
    )
    assert _infer(server, new).status_code == 200


def test_a_broken_access_file_keeps_the_last_good_table(
    server: RuntimeServer, access: AccessDir
) -> None:
    before = server.metric("modelplane_access_reloads_total", model="relu", result="invalid")
    access.publish('{"consumers": [{"name": "x"')
    assert _eventually(
        lambda: (
            server.metric("modelplane_access_reloads_total", model="relu", result="invalid")
            == before + 1
        )
    )
    assert _infer(server, KEYS["alpha"]).status_code == 200
    assert "is invalid" in server.log()


def test_no_key_text_reaches_the_log_or_the_metrics(server: RuntimeServer) -> None:
    text = server.log() + server.get("/metrics").text
    for key in [*KEYS.values(), ROTATED, LATE]:
        assert key not in text
        assert key[len("mp_") :][:12] not in text


def test_an_access_file_that_cannot_be_used_stops_the_start(
    models: dict[str, Path], tmp_path: Path
) -> None:
    bad = tmp_path / "access.json"
    bad.write_text(
        json.dumps({"consumers": [{"name": "a", "models": ["relu"], "keys": [{"sha256": "00"}]}]})
    )
    result = run_runtime_cli(
        "serve", "--model", str(models["relu"]), "--access", str(bad), "--port", "1"
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "consumers.0.keys.0.sha256" in result.stderr
    missing = run_runtime_cli(
        "serve", "--model", str(models["relu"]), "--access", str(tmp_path / "none.json")
    )
    assert missing.returncode == 2
    assert "--access" in missing.stderr
    assert "Traceback" not in result.stderr + missing.stderr


@pytest.mark.parametrize("replicas", [1, 3])
def test_a_consumers_limit_holds_across_replicas(
    models: dict[str, Path], logs: Path, tmp_path: Path, replicas: int
) -> None:
    """6 requests/s, burst 3, for the whole model: each of ``replicas`` servers enforces its
    share. Requests spread evenly (as a Service does) for 3 s: 6 x 3 + 3 = 21 accepted,
    within one request per replica (bucket granularity, the servers' clocks)."""
    key = new_key()
    folder = AccessDir(tmp_path / "mounted")
    limits = {"requestsPerSecond": 6, "burst": 3}
    folder.publish(
        {
            "replicas": replicas,
            "consumers": [
                _consumer("shared", ["relu"], limits, keys=[{"sha256": key_digest(key)}])
            ],
        }
    )
    servers = [
        RuntimeServer(["--model", str(models["relu"]), "--access", str(folder.file)], log_dir=logs)
        for _ in range(replicas)
    ]
    try:
        for server in servers:
            server.wait_live()
        body = json.dumps(_rows(1)).encode()
        accepted = 0
        seconds = 3.0
        started = time.monotonic()
        for server in itertools.cycle(servers):
            if time.monotonic() - started >= seconds:
                break
            answer = server.post("/v2/models/relu/infer", data=body, headers=_bearer(key))
            assert answer.status_code in (200, 429)
            accepted += answer.status_code == 200
        elapsed = time.monotonic() - started
    finally:
        for server in servers:
            server.terminate()
    expected = 6 * elapsed + 3
    assert expected - replicas - 1 <= accepted <= expected + replicas, (accepted, expected)


# Large access files published until both probes were seen answered during a reload: one
# usually does, the others are for a machine so busy that no probe got in meanwhile.
RELOADS = 3


def _large_table(key: str, salt: int) -> dict[str, Any]:
    """MAX_CONSUMERS consumers of 60 models and MAX_KEYS_PER_CONSUMER keys each (about 12
    MB: parsing it takes hundreds of milliseconds); ``key`` is the first one's."""
    digests = (hashlib.sha256(b"%d-%d" % (salt, n)).hexdigest() for n in itertools.count())
    later = "2099-01-01T00:00:00Z"
    consumers = [
        {
            "name": f"consumer-{n}",
            "models": ["relu", *(f"model-{m}" for m in range(59))],
            "keys": [
                {"sha256": key_digest(key) if n == 0 else next(digests)},
                *(
                    {"sha256": next(digests), "notAfter": later}
                    for _ in range(MAX_KEYS_PER_CONSUMER - 1)
                ),
            ],
            "limits": {"requestsPerSecond": 100, "burst": 100, "rowsPerSecond": 1000},
        }
        for n in range(MAX_CONSUMERS)
    ]
    return {"replicas": 2, "consumers": consumers}


def test_probes_are_answered_while_a_large_access_file_is_read_and_parsed(
    models: dict[str, Path], logs: Path, tmp_path: Path
) -> None:
    """Point 10's "parse off the loop": a changed access file of MAX_CONSUMERS consumers is
    read and parsed on a worker thread. Proved by order: the runtime logs a line before the
    read and the table's line after it is installed, with no await between them but the
    worker thread's; a probe sent once the first is written and answered before the second
    can only have been answered by a loop the parse did not hold. Parsed on the loop, none
    ever is, whatever the machine's load."""
    folder = AccessDir(tmp_path / "mounted")
    folder.publish({"consumers": BASE_CONSUMERS})
    args = ["--model", str(models["relu"]), "--access", str(folder.file)]
    answered = dict.fromkeys(PROBE_PATHS, 0)
    with RuntimeServer(args, log_dir=logs) as server:
        for salt in range(RELOADS):
            key = new_key()
            table = _large_table(key, salt)
            log_from = len(server.log())
            folder.publish(table)  # a new file: the next re-read takes it
            counts = server.probes_answered_between(
                f"access file {folder.file} changed: reading it",
                f"access: {MAX_CONSUMERS} consumers",
                log_from=log_from,
            )
            assert _infer(server, key).status_code == 200  # the large table is in force
            for path, count in counts.items():
                answered[path] += count
            if all(answered.values()):
                break
        assert all(answered.values()), (answered, server.log()[-3000:])


def test_new_key_prints_a_key_and_the_digest_an_access_file_lists() -> None:
    result = run_runtime_cli("new-key")
    assert result.returncode == 0, result.stderr
    fields = dict(line.split(maxsplit=1) for line in result.stdout.splitlines())
    assert fields["key"].startswith("mp_")
    assert len(fields["key"]) >= 3 + 43  # 32 random bytes, URL-safe base64
    assert fields["sha256"] == key_digest(fields["key"])
