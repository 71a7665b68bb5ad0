"""Canary analysis: whether the canary's answers, as Prometheus saw them, pass a bound.

Two instant queries over the analysis window, about the canary's pods only: the share of
its answers that were 5xx, and its p99 request latency. Fewer requests than the minimum
give no verdict (a quiet canary is not judged on noise).
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from modelplane_api import facts
from modelplane_api.spec import CanaryAnalysis

QUERY_TIMEOUT_SECONDS = 5.0
MAX_ANSWER_BYTES = 1 << 20


class PrometheusUnavailable(Exception):
    """Prometheus did not answer, or answered something that is not a query result."""


@dataclass(frozen=True)
class Finding:
    passed_bound: bool
    reason: str  # ErrorRatio, Latency, Healthy, TooFewRequests
    message: str


def queries(pods: str, window_seconds: int) -> dict[str, str]:
    """The PromQL for ``pods`` (label matchers) over the window."""
    window = f"{window_seconds}s"
    requests = f"{facts.INFERENCE_REQUESTS_METRIC}_total"
    return {
        "requests": f"sum(increase({requests}{{{pods}}}[{window}]))",
        "errors": f'sum(increase({requests}{{{pods},outcome=~"5.."}}[{window}]))',
        "p99": (
            "histogram_quantile(0.99, sum by (le) "
            f"(rate({facts.REQUEST_SECONDS_METRIC}_bucket{{{pods}}}[{window}])))"
        ),
    }


def instant(prometheus_url: str, query: str) -> float | None:
    """One instant query's single value; None when the result is empty or not a number."""
    url = prometheus_url.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": query})
    try:
        with urllib.request.urlopen(url, timeout=QUERY_TIMEOUT_SECONDS) as answer:  # noqa: S310 - the operator's configured Prometheus
            body = json.loads(answer.read(MAX_ANSWER_BYTES))
    except (OSError, urllib.error.URLError, ValueError) as exc:
        raise PrometheusUnavailable(f"{prometheus_url}: {exc}") from None
    if not isinstance(body, dict) or body.get("status") != "success":
        raise PrometheusUnavailable(f"{prometheus_url}: {str(body)[:200]}")
    result = (body.get("data") or {}).get("result") or []
    if not result:
        return None
    try:
        value = float(result[0]["value"][1])
    except (KeyError, IndexError, TypeError, ValueError):
        raise PrometheusUnavailable(f"{prometheus_url}: unexpected result {result[:1]}") from None
    return None if math.isnan(value) else value


def judge(prometheus_url: str, pods: str, analysis: CanaryAnalysis) -> Finding:
    asked = queries(pods, analysis.window_seconds)
    window = f"{analysis.window_seconds}s"
    requests = instant(prometheus_url, asked["requests"]) or 0.0
    if requests < analysis.min_requests:
        return Finding(
            False,
            "TooFewRequests",
            f"{requests:.0f} canary requests in the last {window}; judged from "
            f"{analysis.min_requests}",
        )
    if analysis.max_error_ratio is not None:
        ratio = (instant(prometheus_url, asked["errors"]) or 0.0) / requests
        if ratio > analysis.max_error_ratio:
            return Finding(
                True,
                "ErrorRatio",
                f"{ratio:.1%} of the canary's {requests:.0f} answers in the last {window} were "
                f"5xx, over analysis.maxErrorRatio {analysis.max_error_ratio:g}",
            )
    if analysis.max_p99_seconds is not None:
        p99 = instant(prometheus_url, asked["p99"])
        if p99 is not None and p99 > analysis.max_p99_seconds:
            return Finding(
                True,
                "Latency",
                f"the canary's p99 over the last {window} was {p99:.3f}s, over "
                f"analysis.maxP99Seconds {analysis.max_p99_seconds:g}",
            )
    return Finding(False, "Healthy", f"{requests:.0f} canary requests in the last {window}")
