"""Kubernetes API access for the operator: plain dicts, server-side apply, typed errors.

A thin layer over the ``kubernetes`` client's request machinery (auth, TLS,
kubeconfig or in-cluster config), so that the operator speaks JSON dicts and
never touches generated models.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from modelplane_api import names
from modelplane_operator.kinds import BY_KIND, MODEL_DEPLOYMENT

Obj = dict[str, Any]
log = logging.getLogger("modelplane.operator")


class ApiError(Exception):
    """A failed API call, with the status code the operator classifies on."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message

    @property
    def retryable(self) -> bool:
        """Conflicts, throttling, server errors and timeouts pass; the rest need a change."""
        return self.status in {0, 408, 409, 429} or self.status >= 500


def load_client() -> client.ApiClient:
    """In-cluster config in a pod, else the kubeconfig (KUBECONFIG or ~/.kube/config)."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        # Passed explicitly: the client reads KUBECONFIG only once, when it is imported.
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
    return client.ApiClient()


class KubeApi:
    def __init__(self, api_client: client.ApiClient, field_manager: str = names.FIELD_MANAGER):
        self.client = api_client
        self.field_manager = field_manager
        self.events = EventRecorder(self)

    def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> Obj | None:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        request = self.client.param_serialize(
            method=method,
            resource_path=path,
            query_params=query or [],
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            response = self.client.call_api(*request, _request_timeout=30)
            response.read()
        except ApiException as exc:
            raise ApiError(exc.status or 0, _reason(exc)) from None
        except OSError as exc:  # connection refused/reset, DNS, TLS
            raise ApiError(0, str(exc)) from None
        status = response.status
        data = response.data
        if status >= 400:
            raise ApiError(status, _message(data))
        return json.loads(data) if data else None

    def serves(self, kind: str) -> bool:
        """Whether the API server knows this kind yet (discovery: no RBAC rule needed)."""
        wanted = BY_KIND[kind]
        try:
            listing = self._call("GET", wanted.group_version_path) or {}
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return any(r.get("name") == wanted.plural for r in listing.get("resources", []))

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        try:
            return self._call("GET", BY_KIND[kind].path(namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def apply(self, obj: Obj, *, manager: str | None = None, force: bool = True) -> Obj:
        """Server-side apply, by default under the operator's field manager, forced
        (it takes over fields other managers changed: drift is repaired)."""
        kind = BY_KIND[obj["kind"]]
        result = self._call(
            "PATCH",
            kind.path(obj["metadata"]["namespace"], obj["metadata"]["name"]),
            body=obj,
            content_type="application/apply-patch+yaml",
            query=[
                ("fieldManager", manager or self.field_manager),
                ("force", "true" if force else "false"),
            ],
        )
        return result or {}

    def create(self, obj: Obj) -> Obj:
        """Create, never overwrite: a 409 when the name is taken."""
        result = self._call(
            "POST",
            BY_KIND[obj["kind"]].path(obj["metadata"]["namespace"]),
            body=obj,
            query=[("fieldManager", self.field_manager)],
        )
        return result or {}

    def merge_patch(self, kind: str, namespace: str, name: str, patch: Obj) -> Obj:
        """A JSON merge patch; one carrying metadata.resourceVersion fails with 409 when the
        object changed since it was read."""
        result = self._call(
            "PATCH",
            BY_KIND[kind].path(namespace, name),
            body=patch,
            content_type="application/merge-patch+json",
            query=[("fieldManager", self.field_manager)],
        )
        return result or {}

    def warn(self, involved: Mapping[str, Any], reason: str, message: str) -> None:
        """A Warning event on ``involved``, as `kubectl describe` shows it: the same problem
        again counts on the same Event (see EventRecorder); worth a try, never a failed
        reconcile (the status says the same)."""
        self.events.record(involved, reason, message)

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Delete in the background (owned objects follow); False when already gone."""
        try:
            self._call(
                "DELETE",
                BY_KIND[kind].path(namespace, name),
                body={"propagationPolicy": "Background"},
            )
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def patch_status(
        self, namespace: str, name: str, status: Obj, kind: str = MODEL_DEPLOYMENT.kind
    ) -> None:
        path = BY_KIND[kind].path(namespace, name) + "/status"
        self._call(
            "PATCH", path, body={"status": status}, content_type="application/merge-patch+json"
        )


@dataclass
class _Posted:
    name: str
    count: int


class EventRecorder:
    """Events aggregated the way client-go's recorder does, for every kind the operator
    reports on (ModelDeployments and ModelConsumers).

    One Event per (object, type, reason, message): a repeat increments its ``count`` and
    moves its ``lastTimestamp``, so a problem that persists across reconciles is one line
    in `kubectl describe` and one object in etcd, not one per reconcile. The Event's name
    is derived from that key, so an operator that restarted finds its Event again (a 409
    on create) and counts on, where client-go's in-memory cache would start a new one.
    A token bucket per object (client-go's spam filter: a burst of 25, then one every
    5 minutes) bounds what one object can post; what it drops is logged.
    """

    BURST = 25
    REFILL_SECONDS = 300.0
    REMEMBERED = 4096  # keys kept (least recently used dropped), as client-go's LRU

    def __init__(self, api: KubeApi, clock: Callable[[], float] = time.monotonic) -> None:
        self.api = api
        self.clock = clock
        self._lock = threading.Lock()  # kopf handlers and the retrier's timers both post
        self._posted: OrderedDict[tuple[str, ...], _Posted] = OrderedDict()
        self._tokens: OrderedDict[tuple[str, ...], tuple[float, float]] = OrderedDict()

    def record(self, involved: Mapping[str, Any], reason: str, message: str) -> None:
        meta = involved["metadata"]
        namespace, name, uid = meta["namespace"], meta["name"], meta.get("uid", "")
        message = message[:1024]
        subject = (namespace, str(involved["kind"]), name, uid)
        key = (*subject, "Warning", reason, message)
        with self._lock:
            if not self._take_token(subject):
                log.info("Warning event %s on %s dropped: over its rate limit", reason, name)
                return
            try:
                self._post(involved, key, reason, message)
            except ApiError as exc:
                log.warning("Warning event %s on %s not posted: %s", reason, name, exc)

    def _take_token(self, subject: tuple[str, ...]) -> bool:
        now = self.clock()
        tokens, since = self._tokens.pop(subject, (float(self.BURST), now))
        tokens = min(float(self.BURST), tokens + (now - since) / self.REFILL_SECONDS)
        allowed = tokens >= 1.0
        self._tokens[subject] = (tokens - 1.0 if allowed else tokens, now)
        while len(self._tokens) > self.REMEMBERED:
            self._tokens.popitem(last=False)
        return allowed

    def _post(
        self, involved: Mapping[str, Any], key: tuple[str, ...], reason: str, message: str
    ) -> None:
        namespace, name = key[0], key[2]
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        known = self._posted.pop(key, None)
        if known is not None and self._count(namespace, known, known.count + 1, now):
            self._remember(key, known)
            return
        # The first of its kind here: the name is the key's, so a restarted operator's
        # create meets the Event it posted before (409) and counts on from it.
        digest = hashlib.sha256("\0".join(key).encode()).hexdigest()[:16]
        posted = _Posted(f"{name}.{digest}", 1)
        try:
            self.api._call(
                "POST",
                f"/api/v1/namespaces/{namespace}/events",
                body=_event(involved, posted.name, reason, message, now),
            )
        except ApiError as exc:
            if exc.status != 409:
                raise
            existing = self.api._call("GET", f"/api/v1/namespaces/{namespace}/events/{posted.name}")
            posted.count = int((existing or {}).get("count") or 1)
            self._count(namespace, posted, posted.count + 1, now)
        self._remember(key, posted)

    def _count(self, namespace: str, posted: _Posted, count: int, now: str) -> bool:
        """Count one more on a posted Event; False when it is gone (Events expire)."""
        try:
            self.api._call(
                "PATCH",
                f"/api/v1/namespaces/{namespace}/events/{posted.name}",
                body={"count": count, "lastTimestamp": now},
                content_type="application/merge-patch+json",
            )
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        posted.count = count
        return True

    def _remember(self, key: tuple[str, ...], posted: _Posted) -> None:
        self._posted[key] = posted
        while len(self._posted) > self.REMEMBERED:
            self._posted.popitem(last=False)


def _event(involved: Mapping[str, Any], name: str, reason: str, message: str, now: str) -> Obj:
    meta = involved["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": involved["apiVersion"],
            "kind": involved["kind"],
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid", ""),
        },
        "type": "Warning",
        "reason": reason,
        "message": message,
        "source": {"component": names.FIELD_MANAGER},
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


def _reason(exc: ApiException) -> str:
    return _message(exc.body) if exc.body else str(exc.reason)


def _message(data: Any) -> str:
    try:
        parsed = json.loads(data)
    except (TypeError, ValueError):
        return str(data)[:500]
    return str(parsed.get("message", parsed)) if isinstance(parsed, dict) else str(parsed)[:500]
