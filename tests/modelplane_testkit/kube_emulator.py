"""A Kubernetes API emulator for the operator's tests: kmock, taught the semantics
the operator depends on.

On top of kmock's HTTP server, discovery, object store, list/fetch and watch
streams, writes (POST, PUT, PATCH, DELETE) are handled here the way an API
server would, well enough for the operator:

- uid, resourceVersion, generation (bumped when anything but metadata/status
  changes) and creationTimestamp are stamped; ``generateName`` is honoured;
- the status subresource is isolated: writes to an object ignore its status,
  writes to ``/status`` change only the status;
- server-side apply (``application/apply-patch+yaml``) is an upsert that tracks
  which manager owns which fields, shown in ``metadata.managedFields``: applying
  a field at its live value shares it, a different value takes it (``force``) or
  is a 409 conflict; an applier's field it stops sending is removed unless
  another manager (say the HPA) owns it; merge patches and updates take
  ownership of what they change, nothing else (so an HPA that never writes
  never owns ``replicas``); a Deployment left without ``spec.replicas`` is
  defaulted to 1, as the API server does;
- deleting an object deletes the objects it owns (background cascade), an
  object whose owners are all gone is deleted as it is written (as the garbage
  collector would, a moment later), and finalizers hold a deletion until removed;
- faults can be injected per method and path, every mutating request is
  recorded, so tests can count writes, and every request at all is logged for
  the RBAC test.

Not emulated: admission and schema validation, strategic-merge list merging
(merge-patch semantics instead), label/field selectors on list and watch,
watch resourceVersion resumption (a watch replays current objects), /scale,
quotas, and every controller (tests play the Deployment controller themselves).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import itertools
import re
import threading
import uuid
from collections.abc import AsyncIterator, Coroutine
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import aiohttp.web
import jsonpatch
import jsonpointer
import kmock
from kmock._internal import references, rendering

Obj = dict[str, Any]
Path = tuple[str, ...]

STATUSLESS = {"events"}
NAMESPACES = kmock.resource("", "v1", "namespaces")
_UNOWNED_META = {"resourceVersion", "uid", "generation", "creationTimestamp", "managedFields"}


@dataclass(frozen=True)
class Access:
    """One request as the API server's authorizer would see it, before any handling."""

    method: str
    path: str
    watch: bool
    content_type: str
    user_agent: str


# Every request any emulator in this process served: the RBAC test reads it.
ACCESS_LOG: list[Access] = []


@dataclass
class Fault:
    """Answer the next ``times`` requests matching method and path with ``status``."""

    method: str
    path: re.Pattern[str]
    status: int
    times: int = 1


@dataclass(frozen=True)
class Mutation:
    method: str
    path: str
    manager: str


@dataclass
class _Ownership:
    by_manager: dict[str, set[Path]] = field(default_factory=dict)
    applied: set[str] = field(default_factory=set)  # managers whose last write was an apply

    def owned_by_others(self, manager: str, path: Path) -> bool:
        return any(path in paths for m, paths in self.by_manager.items() if m != manager)

    def take(self, manager: str, paths: set[Path]) -> None:
        for other, owned in self.by_manager.items():
            if other != manager:
                owned.difference_update(paths)
        self.by_manager.setdefault(manager, set()).update(paths)

    def share(self, manager: str, paths: set[Path]) -> None:
        self.by_manager.setdefault(manager, set()).update(paths)

    def managed_fields(self, api_version: str) -> list[Obj]:
        """metadata.managedFields as the API server renders them (fieldsV1)."""
        entries = []
        for manager, paths in sorted(self.by_manager.items()):
            if not paths:
                continue
            tree: Obj = {}
            for path in sorted(paths):
                node = tree
                for key in path:
                    node = node.setdefault(f"f:{key}", {})
            entries.append(
                {
                    "manager": manager,
                    "operation": "Apply" if manager in self.applied else "Update",
                    "apiVersion": api_version,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": tree,
                }
            )
        return entries


class _StatusError(kmock.KubernetesError):
    def __init__(self, status: int, reason: str, message: str) -> None:
        object.__setattr__(self, "status", status)
        object.__setattr__(self, "reason", reason)
        object.__setattr__(self, "message", message)
        object.__setattr__(self, "details", {})


def _leaves(obj: Any, prefix: Path = ()) -> set[Path]:
    if isinstance(obj, dict) and obj:
        return set().union(*(_leaves(v, (*prefix, k)) for k, v in obj.items()))
    return {prefix}


def _remove(obj: Obj, path: Path) -> None:
    node: Any = obj
    for key in path[:-1]:
        if not isinstance(node, dict) or key not in node:
            return
        node = node[key]
    if isinstance(node, dict):
        node.pop(path[-1], None)


def _merge(dst: Obj, src: Obj, *, nulls_delete: bool) -> Obj:
    for key, value in src.items():
        if value is None and nulls_delete:
            dst.pop(key, None)
        elif isinstance(value, dict) and isinstance(dst.get(key), dict):
            _merge(dst[key], value, nulls_delete=nulls_delete)
        else:
            dst[key] = copy.deepcopy(value)
    return dst


def _json_patched(live: Obj, operations: Any) -> Obj:
    try:
        patched: Obj = jsonpatch.apply_patch(live, operations)
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
        raise _StatusError(422, "Invalid", f"json patch does not apply: {exc}") from None
    return patched


def _verb(request: rendering.Request) -> str:
    return str(getattr(request.method, "value", request.method)).upper()


def _spec_part(obj: Obj) -> Obj:
    return {k: v for k, v in obj.items() if k not in {"metadata", "status"}}


def _at(obj: Any, path: Path) -> Any:
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return _MISSING
        obj = obj[key]
    return obj


_MISSING = object()


def _meta_leaves(obj: Obj) -> set[Path]:
    meta = {k: v for k, v in obj.get("metadata", {}).items() if k not in _UNOWNED_META}
    return _leaves(meta, ("metadata",)) if meta else set()


class ApiEmulator(kmock.KubernetesEmulator):
    """A kmock KubernetesEmulator with the write semantics described above."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.faults: list[Fault] = []
        self.mutations: list[Mutation] = []
        self._versions = itertools.count(1)
        self._version = 0
        self._ownership: dict[Any, _Ownership] = {}
        self._log: list[tuple[int, Any, Obj]] = []  # (resourceVersion, resource, event)
        self._uids: set[str] = set()
        self._watchers: list[tuple[Any, str | None, asyncio.Queue[Obj]]] = []

    # --- set-up -------------------------------------------------------------------------

    def serve(
        self,
        group_version: str,
        plural: str,
        kind: str,
        *,
        namespaced: bool = True,
        status: bool = True,
    ) -> None:
        self.resources[f"{group_version}/{plural}"] = kmock.ResourceInfo(
            kind=kind,
            namespaced=namespaced,
            singular=kind.lower(),
            verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
            subresources={"status"} if status else set(),
        )

    async def _serve_version(self, request: rendering.Request) -> Any:
        served = await super()._serve_version(request)
        assert isinstance(served, dict)
        # kmock names the core group "/v1"; kubectl maps no core kind until it is "v1".
        return {**served, "groupVersion": str(served["groupVersion"]).lstrip("/")}

    # --- dispatch -----------------------------------------------------------------------

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        method = _verb(request)
        ACCESS_LOG.append(
            Access(
                method,
                request.url.path,
                request.params.get("watch", "") in {"true", "1"},
                request.headers.get("Content-Type", ""),
                request.headers.get("User-Agent", ""),
            )
        )
        try:
            self._inject_fault(request)
            if request.resource is not None and request.resource.plural:
                self._check_served(request.resource)
            if request.resource is not None and method in {"POST", "PUT", "PATCH", "DELETE"}:
                self.mutations.append(
                    Mutation(method, request.url.path, request.params.get("fieldManager", ""))
                )
                return aiohttp.web.json_response(await self._write(request, method))
            if request.resource is not None and request.resource.plural:
                if request.action == kmock.action.FETCH:
                    return aiohttp.web.json_response(await self._fetch(request))
                if request.action == kmock.action.LIST:
                    return aiohttp.web.json_response(await self._serve_list(request))
            # Watches and discovery: kmock's own machinery (rare, so its cost does not matter).
            return await kmock.KubernetesScaffold._handle(self, request)
        except kmock.KubernetesError as exc:
            return await self._render_error(exc)

    def _check_served(self, resource: Any) -> None:
        """A kind whose CRD is not installed is a 404, as from the API server."""
        group_version = f"{resource.group}/{resource.version}" if resource.group else "v1"
        if f"{group_version}/{resource.plural}" not in self.resources:
            raise _StatusError(404, "NotFound", "the server could not find the requested resource")

    def _inject_fault(self, request: rendering.Request) -> None:
        method = _verb(request)
        target = request.url.path_qs
        for fault in self.faults:
            if fault.times > 0 and fault.method == method and fault.path.search(target):
                fault.times -= 1
                raise _StatusError(fault.status, "Injected", f"injected {fault.status}")

    # --- writes -------------------------------------------------------------------------

    async def _write(self, request: rendering.Request, method: str) -> Obj:
        resource = request.resource
        assert resource is not None
        manager = request.params.get("fieldManager") or "unknown"
        body: Any = request.data if isinstance(request.data, dict | list) else {}
        namespace: str | None = request.namespace
        name = request.name or ""
        if resource.plural is None and namespace and not name:
            # /api/v1/namespaces/<name> is the Namespace itself, not a namespace prefix.
            resource, name = NAMESPACES, namespace
            namespace = None
        async with self._lock:
            if method == "POST":
                return await self._create(resource, namespace, body, manager)
            key = (resource, namespace, name)
            live = self._live(key)
            if method == "DELETE":
                if live is None:
                    raise kmock.KubernetesObjectNotFoundError()
                return await self._delete(key, live)
            content_type = request.headers.get("Content-Type", "")
            if live is None:
                if "apply-patch" in content_type and request.subresource is None:
                    body = {**body, "metadata": {**body.get("metadata", {}), "name": name}}
                    return await self._create(resource, namespace, body, manager, apply=True)
                raise kmock.KubernetesObjectNotFoundError()
            if "json-patch" in content_type:  # RFC 6902: resolved to the whole new object
                body = _json_patched(live, body)
                method = "PUT"
            if request.subresource == "status":
                return await self._write_status(key, live, body, method)
            if request.subresource is not None:
                raise _StatusError(404, "NotFound", f"subresource {request.subresource}")
            force = request.params.get("force", "") in {"true", "1"}
            return await self._update(key, live, body, manager, method, content_type, force)

    def _live(self, key: Any) -> Obj | None:
        if key not in self._objects or self._objects[key].deleted:
            return None
        raw: Obj = copy.deepcopy(self._objects[key].raw)
        return raw

    def _stamp(self, obj: Obj) -> None:
        self._version = next(self._versions)
        obj.setdefault("metadata", {})["resourceVersion"] = str(self._version)
        if obj.get("kind") == "Deployment" and "replicas" not in obj.get("spec", {}):
            obj.setdefault("spec", {})["replicas"] = 1  # API server defaulting

    async def _store(self, key: Any, obj: Obj, event: str) -> Obj:
        if key in self._objects:
            self._objects[key].create(obj)
        else:
            self._objects[key] = obj
        self._uids.add(obj["metadata"]["uid"])
        self._publish(key, event, obj)
        owners = {ref.get("uid") for ref in obj["metadata"].get("ownerReferences", [])}
        if owners and not owners & self._uids:
            await self._delete(key, copy.deepcopy(obj))  # the GC removes orphans at once
        return obj

    def _publish(self, key: Any, kind: str, obj: Obj) -> None:
        event = {"type": kind, "object": copy.deepcopy(obj)}
        self._log.append((self._version, key[0], event))
        for resource, namespace, queue in self._watchers:
            if resource == key[0] and namespace in (None, key[1]):
                queue.put_nowait(event)

    # --- reads: fetch, list and watch with resourceVersion, as the API server does ---------

    async def _fetch(self, request: rendering.Request) -> Obj:
        async with self._lock:
            found = self._live((request.resource, request.namespace, request.name or ""))
        if found is None or request.subresource not in (None, "status"):
            raise kmock.KubernetesObjectNotFoundError()
        return found

    async def _serve_list(self, request: rendering.Request) -> Obj:
        async with self._lock:
            items = [
                obj
                for key in list(self._objects)
                if key[0] == request.resource
                and request.namespace in (None, key[1])
                and (obj := self._live(key)) is not None
            ]
            return {
                "apiVersion": "v1",
                "kind": "List",
                "metadata": {"resourceVersion": str(self._version)},
                "items": items,
            }

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[Obj | bytes]:
        yield b""
        queue: asyncio.Queue[Obj] = asyncio.Queue()
        async with self._lock:  # subscribe and replay atomically: no event falls in between
            since = request.params.get("resourceVersion", "")
            if since.isdigit() and int(since) > 0:
                backlog = [
                    e
                    for rv, res, e in self._log
                    if rv > int(since)
                    and res == request.resource
                    and request.namespace in (None, e["object"]["metadata"].get("namespace"))
                ]
            else:  # no version: the current objects first, as ADDED
                backlog = [
                    {"type": "ADDED", "object": obj}
                    for key in list(self._objects)
                    if key[0] == request.resource
                    and request.namespace in (None, key[1])
                    and (obj := self._live(key)) is not None
                ]
            watcher = (request.resource, request.namespace, queue)
            self._watchers.append(watcher)
        try:
            for event in backlog:
                yield event
            while True:
                yield await queue.get()
        finally:
            self._watchers.remove(watcher)

    def _render_managed_fields(self, key: Any, obj: Obj) -> None:
        ownership = self._ownership.get(key)
        entries = ownership.managed_fields(obj.get("apiVersion", "")) if ownership else []
        if entries:
            obj.setdefault("metadata", {})["managedFields"] = entries
        else:
            obj.get("metadata", {}).pop("managedFields", None)

    async def _create(
        self,
        resource: references.resource,
        namespace: str | None,
        body: Obj,
        manager: str,
        *,
        apply: bool = False,
    ) -> Obj:
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise _StatusError(422, "Invalid", "metadata.name or generateName is required")
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        namespace = namespace or meta.get("namespace")
        if namespace is not None:
            meta["namespace"] = namespace
        key = (resource, namespace, meta["name"])
        if self._live(key) is not None:
            raise _StatusError(409, "AlreadyExists", f"{meta['name']} already exists")
        if resource.plural not in STATUSLESS:
            obj.pop("status", None)
        meta.update(
            uid=str(uuid.uuid4()),
            generation=1,
            creationTimestamp=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        self._ownership[key] = _Ownership()
        self._ownership[key].take(manager, _leaves(body) - {("metadata", k) for k in _UNOWNED_META})
        if apply:
            self._ownership[key].applied.add(manager)
        self._render_managed_fields(key, obj)
        self._stamp(obj)
        return await self._store(key, obj, "ADDED")

    async def _update(  # noqa: PLR0917 - one request, decomposed
        self,
        key: Any,
        live: Obj,
        body: Obj,
        manager: str,
        method: str,
        content_type: str,
        force: bool = False,
    ) -> Obj:
        incoming = copy.deepcopy(body)
        incoming.pop("status", None)  # the status subresource is separate
        sent_version = incoming.get("metadata", {}).get("resourceVersion")
        if sent_version and sent_version != live["metadata"]["resourceVersion"]:
            raise _StatusError(409, "Conflict", "the object has been modified; try again")
        ownership = self._ownership.setdefault(key, _Ownership())
        sent = _leaves(incoming) - {("metadata", k) for k in _UNOWNED_META}
        if method == "PUT":
            new = {**incoming, "status": live.get("status")}
            new["metadata"] = {
                **incoming.get("metadata", {}),
                **{k: live["metadata"][k] for k in _UNOWNED_META if k in live["metadata"]},
            }
        elif "apply-patch" in content_type:
            same = {p for p in sent if _at(live, p) == _at(incoming, p)}
            conflicts = {p for p in sent - same if ownership.owned_by_others(manager, p)}
            if conflicts and not force:
                fields = ", ".join(".".join(p) for p in sorted(conflicts))
                raise _StatusError(409, "Conflict", f"Apply failed with conflicts: {fields}")
            new = copy.deepcopy(live)
            for path in ownership.by_manager.get(manager, set()) - sent:
                if not ownership.owned_by_others(manager, path):
                    _remove(new, path)
            _merge(new, incoming, nulls_delete=False)
            ownership.by_manager[manager] = set()
            ownership.share(manager, same)  # an equal value is shared, not taken
            ownership.take(manager, sent - same)
            ownership.applied.add(manager)
        else:  # merge-patch and strategic-merge-patch, both as RFC 7386 merge patches
            new = _merge(copy.deepcopy(live), incoming, nulls_delete=True)
        if "apply-patch" not in content_type:
            # An update owns what it changed, and nothing it left as it was.
            leaves = _leaves(_spec_part(new)) | _meta_leaves(new)
            ownership.take(manager, {p for p in leaves if _at(live, p) != _at(new, p)})
            ownership.applied.discard(manager)
        self._render_managed_fields(key, new)
        if new.get("status") is None:
            new.pop("status", None)
        if _spec_part(new) != _spec_part(live):
            new["metadata"]["generation"] = live["metadata"].get("generation", 1) + 1
        if new == live:
            return live  # no-op writes leave resourceVersion alone, as the API server does
        self._stamp(new)
        return await self._after_update(key, new)

    async def _write_status(self, key: Any, live: Obj, body: Obj, method: str) -> Obj:
        new = copy.deepcopy(live)
        if method == "PUT":
            new["status"] = copy.deepcopy(body.get("status", {}))
        else:
            new["status"] = _merge(
                copy.deepcopy(live.get("status", {})), body.get("status", {}), nulls_delete=True
            )
        if new == live:
            return live
        self._stamp(new)
        return await self._store(key, new, "MODIFIED")

    async def _after_update(self, key: Any, new: Obj) -> Obj:
        meta = new["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            return await self._remove(key, new)
        return await self._store(key, new, "MODIFIED")

    async def _delete(self, key: Any, live: Obj) -> Obj:
        meta = live["metadata"]
        if meta.get("finalizers"):
            if not meta.get("deletionTimestamp"):
                meta["deletionTimestamp"] = datetime.datetime.now(datetime.UTC).strftime(
                    "%Y-%m-%dT%H:%M:%SZ"
                )
                self._stamp(live)
                await self._store(key, live, "MODIFIED")
            return live
        return await self._remove(key, live)

    async def _remove(self, key: Any, obj: Obj) -> Obj:
        self._objects[key].delete()
        self._ownership.pop(key, None)
        self._uids.discard(obj["metadata"]["uid"])
        self._stamp(obj)
        self._publish(key, "DELETED", obj)
        uid = obj["metadata"]["uid"]
        for other in list(self._objects):
            dependent = self._live(other)
            if dependent is not None and any(
                ref.get("uid") == uid for ref in dependent["metadata"].get("ownerReferences", [])
            ):
                await self._delete(other, dependent)  # garbage collection, in the background
        return obj

    # --- for tests (call through EmulatorThread.call) -----------------------------------

    def find(self, plural: str, namespace: str, name: str) -> Obj | None:
        for resource, ns, obj_name in list(self._objects):
            if resource.plural == plural and ns == namespace and obj_name == name:
                return self._live((resource, ns, obj_name))
        return None

    def all_of(self, plural: str) -> list[Obj]:
        return [
            obj
            for key in list(self._objects)
            if key[0].plural == plural and (obj := self._live(key)) is not None
        ]


class EmulatorThread:
    """The emulator's event loop in its own thread, so kopf and tests stay out of it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, daemon=True, name="kube-emulator"
        )
        self.emulator = ApiEmulator()
        self._server: kmock.Server | None = None
        self.url = ""

    def __enter__(self) -> EmulatorThread:
        self._thread.start()

        async def start() -> str:
            await self.emulator.__aenter__()
            self._server = kmock.Server(self.emulator)
            await self._server.__aenter__()
            return str(self._server.url).rstrip("/")

        self.url = self.call(start())
        return self

    def call(self, coroutine: Coroutine[Any, Any, Any], timeout: float = 30) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result(timeout=timeout)

    def run(self, function: Any, *args: Any) -> Any:
        """Run a plain function on the emulator's loop, under its lock."""

        async def locked() -> Any:
            async with self.emulator._lock:
                return function(*args)

        return self.call(locked())

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            if self._server is not None:
                await self._server.__aexit__(None, None, None)
            # kmock re-raises errors it saw while serving; the tests judge those themselves.
            with contextlib.suppress(Exception):
                await self.emulator.__aexit__(None, None, None)

        try:
            self.call(stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
            if not self._thread.is_alive():
                self.loop.close()
