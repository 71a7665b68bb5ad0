"""What a PromQL query reads, checked against what /metrics really exports.

Queries are parsed with promql-parser (Prometheus's grammar, in Rust), not scanned for
tokens: a label in ``by (...)``, ``on (...)`` or ``group_left (...)`` belongs to a
sub-expression, and only a syntax tree says which. The label set of every
sub-expression is worked out as Prometheus would (an aggregation keeps its ``by``
labels, ``histogram_quantile`` drops ``le``, ...), so that a query naming a label its
input cannot have, or dividing two sides that can never match, is reported.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import promql_parser as pq
from prometheus_client.parser import text_string_to_metric_families

# Labels Prometheus adds to every sample it scrapes from a PodMonitor or ServiceMonitor
# target (the runtime's metrics get namespace and pod from here).
TARGET_LABELS = frozenset(
    {"namespace", "pod", "container", "endpoint", "job", "instance", "service"}
)
# Grafana's interval variables, replaced by a duration before parsing.
GRAFANA_INTERVALS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
_LABEL_VALUES = re.compile(r"^\s*label_values\((?P<selector>.*),\s*(?P<label>\w+)\s*\)\s*$")
_SET_OPS = {"and", "or", "unless"}
_COMPARISONS = {"==", "!=", ">", "<", ">=", "<="}
Exported = Mapping[str, frozenset[str]]
Labels = frozenset[str] | None  # None: a scalar or a string


def exported_series(exposition: str) -> dict[str, frozenset[str]]:
    """Every sample name in a /metrics text (``x_total``, ``x_bucket`` ...) and the label
    names its samples carry."""
    found: dict[str, frozenset[str]] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            found[sample.name] = found.get(sample.name, frozenset()) | set(sample.labels)
    return found


def grafana_expr(expr: str) -> str:
    for variable, duration in GRAFANA_INTERVALS.items():
        expr = expr.replace(variable, duration)
    return expr


def query_problems(expr: str, exported: Exported) -> list[str]:
    """What is wrong with ``expr`` against these exported series; [] when nothing is."""
    try:
        tree = pq.parse(grafana_expr(expr))
    except ValueError as exc:
        return [f"{expr!r} does not parse: {exc}"]
    problems: list[str] = []
    _Checker(exported, problems).labels(tree)
    return [f"{expr!r}: {problem}" for problem in problems]


def label_values_problems(query: str, exported: Exported) -> list[str]:
    """A Grafana variable's ``label_values(selector, label)``: the selector checked, and
    the label one it carries."""
    match = _LABEL_VALUES.match(query)
    if match is None:
        return [f"{query!r} is not label_values(selector, label)"]
    problems = query_problems(match["selector"], exported)
    if problems:
        return problems
    labels = _Checker(exported, []).labels(pq.parse(grafana_expr(match["selector"])))
    if labels is None or match["label"] not in labels:
        return [f"{query!r}: the selector has no label {match['label']}"]
    return []


class _Checker:
    def __init__(self, exported: Exported, problems: list[str]) -> None:
        self.exported = exported
        self.problems = problems

    def labels(self, node: Any) -> Labels:  # noqa: PLR0911 - one answer per node type
        """The label names the result of ``node`` can carry; problems on the way noted."""
        if isinstance(node, pq.NumberLiteral | pq.StringLiteral):
            return None
        if isinstance(node, pq.ParenExpr | pq.UnaryExpr | pq.SubqueryExpr):
            return self.labels(node.expr)
        if isinstance(node, pq.MatrixSelector):
            return self.labels(node.vector_selector)
        if isinstance(node, pq.VectorSelector):
            return self._selector(node)
        if isinstance(node, pq.Call):
            return self._call(node)
        if isinstance(node, pq.AggregateExpr):
            return self._aggregate(node)
        if isinstance(node, pq.BinaryExpr):
            return self._binary(node)
        self.problems.append(f"unexpected node {type(node).__name__}")
        return None

    def _selector(self, node: Any) -> Labels:
        name = node.name
        if name is None:
            self.problems.append(f"{node} names no metric")
            return frozenset()
        if name not in self.exported:
            self.problems.append(f"{name} is not exported")
            return frozenset()
        labels = self.exported[name] | TARGET_LABELS
        matchers = list(node.matchers.matchers)
        for group in node.matchers.or_matchers or []:
            matchers += list(group)
        for matcher in matchers:
            if matcher.name != "__name__" and matcher.name not in labels:
                self.problems.append(f"{name} has no label {matcher.name}")
        return labels

    def _call(self, node: Any) -> Labels:
        args = [self.labels(arg) for arg in node.args]
        function = node.func.name
        if function == "histogram_quantile":
            buckets = args[1] or frozenset()
            if "le" not in buckets:
                self.problems.append("histogram_quantile over series without le")
            return buckets - {"le"}
        if function in {"label_replace", "label_join"}:
            return (args[0] or frozenset()) | {node.args[1].val}
        if str(node.func.return_type) == str(pq.ValueType.Scalar):
            return None
        vectors = [labels for labels in args if labels is not None]
        return vectors[0] if vectors else frozenset()

    def _aggregate(self, node: Any) -> Labels:
        inner = self.labels(node.expr) or frozenset()
        modifier = node.modifier
        op = str(node.op)
        if modifier is None:
            kept = inner if op in {"topk", "bottomk", "limitk", "limit_ratio"} else frozenset()
        elif modifier.type == pq.AggModifierType.By:
            missing = set(modifier.labels) - inner
            if missing:
                self.problems.append(f"{op} by {sorted(missing)}: not labels of its input")
            kept = frozenset(modifier.labels)
        else:
            kept = inner - set(modifier.labels)
        if op == "count_values":
            kept |= {node.param.val}
        return kept

    def _binary(self, node: Any) -> Labels:
        left, right = self.labels(node.lhs), self.labels(node.rhs)
        if left is None or right is None:
            return right if left is None else left
        op = str(node.op).split()[0]
        modifier = node.modifier
        matching = modifier.matching if modifier is not None else None
        if matching is None:
            if op != "or" and left != right:
                self.problems.append(
                    f"the sides of {op} never match: {sorted(left)} vs {sorted(right)}"
                )
            return left | right if op == "or" else left
        names = frozenset(matching.labels)
        if matching.type == pq.LabelModifierType.Include:  # on (...)
            for side, labels in (("left", left), ("right", right)):
                if names - labels:
                    self.problems.append(f"on {sorted(names - labels)}: not on the {side} side")
        elif left - names != right - names:  # ignoring (...)
            self.problems.append(f"the sides of {op} ignoring {sorted(names)} never match")
        group = frozenset(modifier.group_labels or ())
        card = str(modifier.card)
        one_side = right if card.endswith("ManyToOne") else left
        if group - one_side:
            self.problems.append(f"group labels {sorted(group - one_side)} not on the one side")
        return _matched(op, modifier, left, right)


def _matched(op: str, modifier: Any, left: frozenset[str], right: frozenset[str]) -> frozenset[str]:
    """The labels of ``left op on/ignoring (...) right``, as Prometheus builds them."""
    card, matching = str(modifier.card), modifier.matching
    group = frozenset(modifier.group_labels or ())
    if op in _SET_OPS or op in _COMPARISONS:
        return left | right if op == "or" else left
    if card.endswith("ManyToOne"):
        return left | group
    if card.endswith("OneToMany"):
        return right | group
    names = frozenset(matching.labels)
    return names if matching.type == pq.LabelModifierType.Include else left - names
