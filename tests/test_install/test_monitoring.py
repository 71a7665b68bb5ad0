"""Monitoring that ships: the runtime pods' PodMonitor, the alerts, the Grafana dashboards.

- promtool checks and unit-tests the alerts exactly as the chart renders them
  (tests/test_install/alerts_test.yaml: every alert firing, and silent on healthy series);
- every query in the alerts and dashboards reads only metrics and labels that a real
  runtime and a real operator export, scraped from their /metrics after serving traffic;
- the PodMonitor selects the pods the operator renders, on their metrics port;
- the monitoring objects validate against the Prometheus Operator's own CRDs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser as pq
import pytest
import requests
import yaml

from modelplane_api import facts, names
from modelplane_api.access import key_digest, new_key
from modelplane_api.spec import parse_model_deployment
from modelplane_operator.config import OperatorConfig
from modelplane_operator.render import render_children
from modelplane_operator.status import judge_deployment
from modelplane_testkit import helm, onnx_models
from modelplane_testkit.crd_validation import validate_against_crd
from modelplane_testkit.mounted import AccessDir
from modelplane_testkit.operator_harness import (
    OPERATOR_ARGS,
    Cluster,
    start_emulator,
    wait_for,
    write_kubeconfig,
)
from modelplane_testkit.promql import (
    exported_series,
    label_values_problems,
    query_problems,
)
from modelplane_testkit.promtool import HOW_TO_GET_IT, find_promtool, promtool
from modelplane_testkit.runtime_server import STOP_TIMEOUT, RuntimeServer, free_port
from test_operator.samples import minimal

Obj = dict[str, Any]
MONITORING: Obj = {
    "metrics": {"serviceMonitor": {"enabled": True}},
    "monitoring": {
        "podMonitor": {"enabled": True},
        "rules": {"enabled": True},
        "dashboards": {"enabled": True},
    },
}
ALERTS_TEST = Path(__file__).with_name("alerts_test.yaml")
RENDERED_ALERTS = "rendered-alerts.yaml"  # what alerts_test.yaml's rule_files names
DASHBOARDS = {path.stem: path for path in sorted((helm.CHART / "files/dashboards").glob("*.json"))}
PROMETHEUS_OPERATOR_CRDS = (
    helm.REPO.parent / "shared" / "third-party-crds" / "prometheus-operator-v0.93.0"
)
SEVERITIES = {"critical", "warning", "info"}


@pytest.fixture(scope="module")
def rendered() -> list[Obj]:
    return helm.template(MONITORING)


def _of_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


def _rule_file(objects: list[Obj]) -> Obj:
    (rule,) = _of_kind(objects, "PrometheusRule")
    spec: Obj = rule["spec"]
    return spec


def _alerts(objects: list[Obj]) -> dict[str, Obj]:
    return {
        rule["alert"]: rule
        for group in _rule_file(objects)["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


# --- the alerts, through promtool -------------------------------------------------------------


def test_promtool_checks_and_unit_tests_the_alerts_as_rendered(
    rendered: list[Obj], tmp_path: Path
) -> None:
    binary = find_promtool()
    if binary is None:
        pytest.skip(HOW_TO_GET_IT)
    (tmp_path / RENDERED_ALERTS).write_text(yaml.safe_dump(_rule_file(rendered)))
    shutil.copy(ALERTS_TEST, tmp_path / ALERTS_TEST.name)
    checked = promtool(binary, "check", "rules", RENDERED_ALERTS, cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(_alerts(rendered))} rules found" in checked.stdout, checked.stdout
    tested = promtool(binary, "test", "rules", ALERTS_TEST.name, cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_is_unit_tested_firing_and_silent(rendered: list[Obj]) -> None:
    tests = yaml.safe_load(ALERTS_TEST.read_text())
    assert tests["rule_files"] == [RENDERED_ALERTS]
    cases = [case for group in tests["tests"] for case in group["alert_rule_test"]]
    firing = {case["alertname"] for case in cases if case["exp_alerts"]}
    silent = {case["alertname"] for case in cases if not case["exp_alerts"]}
    assert firing == set(_alerts(rendered)), "an alert is never seen firing"
    assert silent == set(_alerts(rendered)), "an alert is never seen silent"


def test_every_alert_says_how_bad_and_names_the_model(rendered: list[Obj]) -> None:
    for name, rule in _alerts(rendered).items():
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert re.fullmatch(r"\d+m", rule["for"]), name
        for text in (rule["annotations"]["summary"], rule["annotations"]["description"]):
            wanted = ["$labels.namespace", "$labels.model"]
            if "consumer" in rule["expr"]:
                wanted.append("$labels.consumer")
            assert all(label in text for label in wanted), (name, text)


def test_thresholds_come_from_the_values() -> None:
    thresholds = {
        "ModelplaneErrorRatioHigh": ("errorRatio", 0.25),
        "ModelplaneLatencyOverTarget": ("p99LatencySeconds", 0.3),
        "ModelplaneQueueSaturated": ("queueFullRatio", 0.5),
        "ModelplaneConsumerOverLimit": ("consumerRefusedRatio", 0.75),
    }
    rules = {"enabled": True, **dict(thresholds.values())}
    alerts = _alerts(helm.template({"monitoring": {"rules": rules}}))
    for alert, (key, value) in thresholds.items():
        assert alerts[alert]["expr"].rstrip().endswith(f"> {value}"), (key, alerts[alert])
        assert f"{value}" in alerts[alert]["annotations"]["description"], key


def _matcher(alert: Obj, label: str) -> Any:
    """The ``label`` matcher of an alert's first selector."""
    found: list[Any] = []

    def visit(node: Any) -> None:
        if isinstance(node, pq.VectorSelector):
            found.extend(m for m in node.matchers.matchers if m.name == label)

    pq.walk(pq.parse(alert["expr"]), pre_visit=visit)
    return found[0]


def _fetch_pod(*, message: str | None, running: bool = False) -> Obj:
    """A runtime pod whose model fetch is running or waiting to run again, and last ended
    with ``message`` (None: it has not ended yet)."""
    status: Obj = {
        "name": names.FETCH_CONTAINER,
        "restartCount": 1,
        "state": (
            {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
            if running
            else {"waiting": {"reason": "CrashLoopBackOff"}}
        ),
    }
    if message is not None:
        status["lastState"] = {"terminated": {"exitCode": 1, "message": message}}
    return {"status": {"initContainerStatuses": [status]}}


def test_the_reasons_alerted_on_are_the_ones_the_status_gives(rendered: list[Obj]) -> None:
    """The alerts match Ready reasons by name: renaming one in status.py must fail here."""
    alerts = _alerts(rendered)
    fetch = re.compile(_matcher(alerts["ModelplaneModelFetchFailing"], "reason").value)
    deployment = {"metadata": {"generation": 1}, "spec": {"replicas": 1}, "status": {}}
    stalled = f"{facts.FETCH_STALLED}: 5 attempts without progress"
    failing = {
        "fails": _fetch_pod(message="error: NoSuchKey"),
        "stalled": _fetch_pod(message=stalled),
        "retrying after a stall": _fetch_pod(message=stalled, running=True),
    }
    for what, pod in failing.items():
        reason = judge_deployment(deployment, [pod]).reason
        assert fetch.fullmatch(reason), (what, reason)
    fetching = judge_deployment(deployment, [_fetch_pod(message=None, running=True)]).reason
    assert fetching == "FetchingModel"
    assert not fetch.fullmatch(fetching)

    scaled_down = {**deployment, "spec": {"replicas": 0}, "status": {"observedGeneration": 1}}
    not_ready = _matcher(alerts["ModelplaneModelNotReady"], "reason")
    assert judge_deployment(scaled_down, []).reason == not_ready.value


# --- every query reads what is really exported --------------------------------------------------


@pytest.fixture(scope="module")
def runtime_exposition(tmp_path_factory: pytest.TempPathFactory) -> str:
    """/metrics of a real runtime with a consumer, after a success, a 429 and a 401."""
    folder = tmp_path_factory.mktemp("monitored-runtime")
    key = new_key()
    access = AccessDir(folder / "access")
    access.publish(
        {
            "consumers": [
                {
                    "name": "team",
                    "models": ["relu"],
                    "keys": [{"sha256": key_digest(key)}],
                    "limits": {"requestsPerSecond": 0.01, "burst": 1},
                }
            ]
        }
    )
    model = onnx_models.relu_and_double(folder / "relu.onnx")
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    bearer = {"Authorization": f"Bearer {key}"}
    args = ["--model", str(model), "--access", str(access.file)]
    with RuntimeServer(args, log_dir=folder) as server:
        answers = [server.post("/v2/models/relu/infer", json=body, headers=bearer)]
        answers.append(server.post("/v2/models/relu/infer", json=body, headers=bearer))
        answers.append(server.post("/v2/models/relu/infer", json=body))
        assert [a.status_code for a in answers] == [200, 429, 401], [a.text for a in answers]
        return server.metrics()


def _scrape(port: int, wanted: tuple[str, ...]) -> str | None:
    try:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except requests.ConnectionError:
        return None
    return text if all(f"\n{name}" in text for name in wanted) else None


@pytest.fixture(scope="module")
def operator_exposition(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """/metrics of the real operator (its own process, as in its pod) after it reconciled
    a ModelDeployment, against the API emulator."""
    folder = tmp_path_factory.mktemp("monitored-operator")
    port = free_port()
    with start_emulator() as emulator:
        Cluster(emulator).create("modeldeployments", minimal())
        env = {
            **os.environ,
            "KUBECONFIG": str(write_kubeconfig(folder / "kubeconfig", emulator.url)),
            "MODELPLANE_OPERATOR_METRICS_PORT": str(port),
            "MODELPLANE_OPERATOR_METRICS_ADDRESS": "127.0.0.1",
        }
        with (folder / "operator.log").open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "kopf", *OPERATOR_ARGS],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                wanted = ("modelplane_model_deployment_ready{", "modelplane_operator_reconciles_")
                yield wait_for(lambda: _scrape(port, wanted), "the operator's metrics", 60)
            finally:
                process.terminate()
                try:
                    process.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=STOP_TIMEOUT)


@pytest.fixture(scope="module")
def exported(runtime_exposition: str, operator_exposition: str) -> dict[str, frozenset[str]]:
    runtime = exported_series(runtime_exposition)
    operator = exported_series(operator_exposition)
    both = {**runtime, **operator}
    for name in runtime.keys() & operator.keys():  # python_*, process_*
        both[name] = runtime[name] | operator[name]
    return both


def _dashboard(name: str) -> Obj:
    dashboard: Obj = json.loads(DASHBOARDS[name].read_text())
    return dashboard


def _panel_exprs(dashboard: Obj) -> list[str]:
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def _variable_queries(dashboard: Obj) -> list[str]:
    return [v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"]


def test_every_query_reads_only_metrics_and_labels_that_are_exported(
    rendered: list[Obj], exported: dict[str, frozenset[str]]
) -> None:
    alerts = [rule["expr"] for rule in _alerts(rendered).values()]
    panels = [expr for name in DASHBOARDS for expr in _panel_exprs(_dashboard(name))]
    variables = [query for name in DASHBOARDS for query in _variable_queries(_dashboard(name))]
    assert len(alerts) == 6
    assert len(panels) >= 20
    assert len(variables) == 5
    problems = [p for expr in [*alerts, *panels] for p in query_problems(expr, exported)]
    problems += [p for query in variables for p in label_values_problems(query, exported)]
    assert problems == []


# --- the dashboards ---------------------------------------------------------------------------


def _selectors(expr: str) -> list[Any]:
    found: list[Any] = []

    def visit(node: Any) -> None:
        if isinstance(node, pq.VectorSelector):
            found.append(node)

    pq.walk(pq.parse(expr.replace("$__rate_interval", "5m").replace("$__range", "1h")), visit)
    return found


@pytest.mark.parametrize(
    ("name", "scope"),
    [("model", ("namespace", "model")), ("consumer", ("namespace", "consumer", "model"))],
)
def test_each_dashboard_shows_only_the_chosen_model_or_consumer(
    name: str, scope: tuple[str, ...]
) -> None:
    dashboard = _dashboard(name)
    variables = [v["name"] for v in dashboard["templating"]["list"]]
    assert variables == ["datasource", *scope], variables
    for expr in _panel_exprs(dashboard):
        for selector in _selectors(expr):
            filters = {m.name: m.value for m in selector.matchers.matchers}
            for label in scope:
                assert filters.get(label) == f"${label}", (expr, label)
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    assert all(p["datasource"] == {"type": "prometheus", "uid": "${datasource}"} for p in panels)


def test_dashboards_ship_as_configmaps_grafanas_sidecar_finds(rendered: list[Obj]) -> None:
    maps = {
        o["metadata"]["name"]: o
        for o in _of_kind(rendered, "ConfigMap")
        if o["metadata"]["labels"].get("grafana_dashboard") == "1"
    }
    assert sorted(maps) == [f"{helm.RELEASE}-dashboard-{name}" for name in sorted(DASHBOARDS)]
    for name, path in DASHBOARDS.items():
        data = maps[f"{helm.RELEASE}-dashboard-{name}"]["data"]
        assert data == {f"modelplane-{name}.json": path.read_text().rstrip("\n")}
    uids = {_dashboard(name)["uid"] for name in DASHBOARDS}
    assert len(uids) == len(DASHBOARDS)

    elsewhere = {"monitoring": {"dashboards": {"enabled": True, "namespace": "grafana"}}}
    moved = _of_kind(helm.template(elsewhere), "ConfigMap")
    assert {o["metadata"]["namespace"] for o in moved} >= {"grafana"}


# --- what the chart renders -----------------------------------------------------------------


def test_nothing_is_rendered_for_monitoring_unless_asked() -> None:
    objects = helm.template()
    kinds = {o["kind"] for o in objects}
    assert not kinds & {"PodMonitor", "PrometheusRule", "ServiceMonitor"}
    assert not [o for o in _of_kind(objects, "ConfigMap") if "grafana_dashboard" in str(o)]


def test_the_pod_monitor_scrapes_the_pods_the_operator_renders(rendered: list[Obj]) -> None:
    (monitor,) = _of_kind(rendered, "PodMonitor")
    md = parse_model_deployment(minimal())
    (deployment,) = [o for o in render_children(md, OperatorConfig()) if o["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert monitor["spec"]["selector"]["matchLabels"][names.LABEL_NAME] == names.APP_NAME
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    runtime = next(c for c in pod["spec"]["containers"] if c["name"] == names.RUNTIME_CONTAINER)
    assert endpoint["port"] in {port["name"] for port in runtime["ports"]}
    assert endpoint["port"] == names.HTTP_PORT_NAME
    assert endpoint["path"] == facts.METRICS_PATH
    assert monitor["spec"]["namespaceSelector"] == {"any": True}

    scoped = helm.template({**MONITORING, "operator": {"watchNamespaces": ["team-a", "team-b"]}})
    (monitor,) = _of_kind(scoped, "PodMonitor")
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}


def test_the_operator_scrape_keeps_the_model_deployments_namespace(rendered: list[Obj]) -> None:
    """modelplane_model_deployment_ready{namespace} is the ModelDeployment's: without
    honorLabels Prometheus would overwrite it with the operator's own namespace."""
    (monitor,) = _of_kind(rendered, "ServiceMonitor")
    assert [e.get("honorLabels") for e in monitor["spec"]["endpoints"]] == [True]


def test_monitoring_objects_are_valid_for_the_prometheus_operator(rendered: list[Obj]) -> None:
    if not PROMETHEUS_OPERATOR_CRDS.is_dir():
        pytest.skip(f"no {PROMETHEUS_OPERATOR_CRDS} (the shared folder beside the checkout)")
    crds = {
        "PodMonitor": "monitoring.coreos.com_podmonitors.yaml",
        "ServiceMonitor": "monitoring.coreos.com_servicemonitors.yaml",
        "PrometheusRule": "monitoring.coreos.com_prometheusrules.yaml",
    }
    for kind, file in crds.items():
        (obj,) = _of_kind(rendered, kind)
        assert validate_against_crd(obj, crd=PROMETHEUS_OPERATOR_CRDS / file) == [], kind
