"""Apply a ModelDeployment's children: one outcome per object, one log line each.

A child is compared with what the operator owns in it (every field it renders),
not with the raw live object, so server defaults never cause an update; a child
changed or deleted by hand differs and is applied again. A child that exists
without this ModelDeployment as its controller is never touched.

Server-side apply removes a field its manager stops sending. So a field the
operator owns (``metadata.managedFields``) but no longer renders also means an
apply, and a field another controller must keep (a Deployment's ``replicas``
once an HPA scales it) is first handed to a manager of its own, so that it
survives the operator letting go of it.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from modelplane_api import names
from modelplane_api.quantities import parse_quantity
from modelplane_operator.kinds import BY_KIND, FieldPath
from modelplane_operator.kube import ApiError, KubeApi

Obj = dict[str, Any]
log = logging.getLogger("modelplane.operator")


class Outcome(enum.Enum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    DELETED = "deleted"
    NOT_OWNED = "not-owned"


@dataclass(frozen=True)
class ChildResult:
    kind: str
    name: str
    outcome: Outcome
    live: Obj | None = None  # the object as the API holds it now, when known

    @property
    def wrote(self) -> bool:
        return self.outcome in {Outcome.CREATED, Outcome.UPDATED, Outcome.DELETED}


LiveLookup = Callable[[str, str, str], "Obj | None"]
WriteNotice = Callable[[str, "ChildResult"], None]  # namespace, what was written


def is_controlled_by(obj: Mapping[str, Any], owner_uid: str) -> bool:
    return any(
        ref.get("uid") == owner_uid and ref.get("controller")
        for ref in obj.get("metadata", {}).get("ownerReferences", [])
    )


def apply_children(
    api: KubeApi,
    owner_uid: str,
    desired: list[Obj],
    unwanted: list[tuple[str, str, str]],
    *,
    live: LiveLookup,
    cached: LiveLookup,
    written: WriteNotice = lambda namespace, result: None,
) -> list[ChildResult]:
    """Make the cluster hold ``desired`` and not ``unwanted`` (kind, namespace, name).

    ``live`` finds any current object (watch cache, else the API: a child in the
    way may carry none of our labels); ``cached`` only the ones the operator
    labelled, which is all it may delete. Nothing is written when any desired
    child is taken by someone else. ``written`` hears of each write as it returns, before
    the next one: the watch may bring it back while this reconcile still runs.
    """
    current = [
        (obj, live(obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"]))
        for obj in desired
    ]
    foreign = [
        ChildResult(obj["kind"], obj["metadata"]["name"], Outcome.NOT_OWNED)
        for obj, found in current
        if found is not None and not is_controlled_by(found, owner_uid)
    ]
    if foreign:
        return foreign
    results: list[ChildResult] = []
    for obj, found in current:
        name = obj["metadata"]["name"]
        dropped = released(found, obj) if found is not None else set()
        if found is not None and not dropped and contains(found, obj):
            results.append(ChildResult(obj["kind"], name, Outcome.UNCHANGED, found))
            continue
        if found is not None:
            _hand_over(api, found, dropped & set(BY_KIND[obj["kind"]].handed_over))
        applied = api.apply(obj)
        outcome = Outcome.CREATED if found is None else Outcome.UPDATED
        log.info("%s %s/%s %s", obj["kind"], obj["metadata"]["namespace"], name, outcome.value)
        results.append(ChildResult(obj["kind"], name, outcome, applied))
        written(obj["metadata"]["namespace"], results[-1])
    for kind, namespace, name in unwanted:
        found = cached(kind, namespace, name)
        if found is None or not is_controlled_by(found, owner_uid):
            continue
        if api.delete(kind, namespace, name):
            log.info("%s %s/%s deleted", kind, namespace, name)
            results.append(ChildResult(kind, name, Outcome.DELETED, found))
            written(namespace, results[-1])
    return results


def _hand_over(api: KubeApi, live: Obj, paths: set[FieldPath]) -> None:
    """Give each field to the hand-over manager, at its live value, before letting go."""
    if not paths:
        return
    partial: Obj = {
        "apiVersion": live["apiVersion"],
        "kind": live["kind"],
        "metadata": {
            "name": live["metadata"]["name"],
            "namespace": live["metadata"]["namespace"],
        },
    }
    handed: list[FieldPath] = []
    for path in sorted(paths):
        value: Any = live
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if value is None:
            continue  # nothing to keep: the field goes with the operator's apply
        node = partial
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
        handed.append(path)
    if not handed:
        return
    try:
        # Not forced: it only ever shares a field with the operator, at the same value.
        api.apply(partial, manager=names.HANDOVER_FIELD_MANAGER, force=False)
    except ApiError as exc:
        if exc.status != 409:  # 409: someone else already owns it, which is the point
            raise
    log.info(
        "%s %s/%s: %s handed over",
        live["kind"],
        live["metadata"]["namespace"],
        live["metadata"]["name"],
        ", ".join(".".join(p) for p in handed),
    )


def owned_fields(live: Mapping[str, Any], manager: str = names.FIELD_MANAGER) -> set[FieldPath]:
    """The fields ``manager`` owns through its applies, down to maps' leaves (a list is a leaf)."""
    found: set[FieldPath] = set()
    for entry in live.get("metadata", {}).get("managedFields") or []:
        if (
            entry.get("manager") == manager
            and entry.get("operation") == "Apply"
            and not entry.get("subresource")
        ):
            found |= _field_paths(entry.get("fieldsV1") or {}, ())
    return found


def _field_paths(fields: Mapping[str, Any], prefix: FieldPath) -> set[FieldPath]:
    paths: set[FieldPath] = set()
    for key, sub in fields.items():
        if not key.startswith("f:"):
            continue
        path = (*prefix, key[2:])
        children = {k for k in sub if k.startswith("f:")} if isinstance(sub, dict) else set()
        is_list = isinstance(sub, dict) and any(k[:2] in {"k:", "v:", "i:"} for k in sub)
        paths |= _field_paths(sub, path) if children and not is_list else {path}
    return paths


def released(live: Mapping[str, Any], desired: Mapping[str, Any]) -> set[FieldPath]:
    """Fields the operator owns in ``live`` that ``desired`` no longer sets."""
    return {path for path in owned_fields(live) if not _sets(desired, path)}


def _sets(obj: Any, path: FieldPath) -> bool:
    for key in path:
        if isinstance(obj, list):
            return True  # list contents are compared by contains()
        if not isinstance(obj, dict) or key not in obj:
            return False
        obj = obj[key]
    return True


def contains(live: Any, wanted: Any, *, quantities: bool = False) -> bool:
    """Whether ``live`` holds every field of ``wanted`` (extra, defaulted fields are fine)."""
    if isinstance(wanted, dict):
        return isinstance(live, dict) and all(
            key in live
            and contains(live[key], value, quantities=quantities or key in _QUANTITY_MAPS)
            for key, value in wanted.items()
        )
    if isinstance(wanted, list):
        return (
            isinstance(live, list)
            and len(live) == len(wanted)
            and all(
                contains(a, b, quantities=quantities) for a, b in zip(live, wanted, strict=True)
            )
        )
    if live == wanted:
        return True
    # The API server writes quantities canonically ("0.5" comes back as "500m").
    return (
        quantities
        and parse_quantity(live) is not None
        and parse_quantity(live) == parse_quantity(wanted)
    )


_QUANTITY_MAPS = frozenset({"requests", "limits"})
