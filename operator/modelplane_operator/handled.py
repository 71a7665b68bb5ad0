"""kopf's bookkeeping without writes of its own on the ModelDeployment.

The diff-base ("what was last handled") is read from status.observedGeneration.

kopf's stock storage keeps a copy of the spec in an annotation and patches it
after every handled change: one extra write per create and per update, and a
second copy of the spec on every object. The reconcile already writes
``status.observedGeneration`` whenever it has acted on a generation, which is
the Kubernetes way of saying "handled". So:

- after kopf finishes the handlers, the handled essence is kept in memory
  (a few hundred bytes of JSON per ModelDeployment), nothing is written;
- a ModelDeployment not in memory (the operator restarted, or its first
  reconcile is being retried) counts as handled when its status has caught up
  with its generation and kopf has no retry pending for it: kopf sees no change
  and, on a restart, runs only the resume handler;
- anything else has no diff-base, and kopf runs the create handler, which
  calls the same reconcile as the update handler (so the first spec change
  after a restart is logged by kopf as a creation).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable

import kopf

from modelplane_api import names

Key = tuple[str, str]


class ObservedGenerationDiffBase(kopf.DiffBaseStorage):
    def __init__(self, progress: kopf.ProgressStorage, handler_ids: Iterable[str]) -> None:
        super().__init__()
        self._progress = progress
        self._handler_ids = [kopf.HandlerId(handler_id) for handler_id in handler_ids]
        self._guard = threading.Lock()
        self._handled: dict[Key, tuple[str, bytes]] = {}  # (ns, name) -> (uid, essence JSON)

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        key, uid = _key(body), body.metadata.uid or ""
        with self._guard:
            remembered = self._handled.get(key)
        if remembered is not None and remembered[0] == uid:
            essence: kopf.BodyEssence = json.loads(remembered[1])
            return essence
        status = body.get("status") or {}
        caught_up = status.get("observedGeneration") == body.metadata.get("generation")
        if not caught_up or self._retry_pending(body):
            return None
        # Not remembered: this event may predate kopf's record of a retry.
        return self.build(body=body)

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        encoded = json.dumps(essence, separators=(",", ":")).encode()
        with self._guard:
            self._handled[_key(body)] = (body.metadata.uid or "", encoded)

    def forget(self, key: Key) -> None:
        with self._guard:
            self._handled.pop(key, None)

    def _retry_pending(self, body: kopf.Body) -> bool:
        return any(
            self._progress.fetch(key=handler_id, body=body) is not None
            for handler_id in self._handler_ids
        )


class RetryAnnotations(kopf.AnnotationsProgressStorage):
    """kopf's per-handler retry records, as annotations under ``prefix``.

    Beside every record it stores, kopf adds a ``<prefix>/kopf-managed: yes``
    marker. When the handler succeeds at once, the record is purged from the same
    patch but the marker stays, and patching it in is one more write per object.
    Nothing here needs the marker (it tells other kopf operators to ignore these
    annotations), so it goes wherever no record of this storage goes with it.
    """

    def purge(self, *, key: kopf.HandlerId, body: kopf.Body, patch: kopf.Patch) -> None:
        super().purge(key=key, body=body, patch=patch)
        marker = f"{self.prefix}/kopf-managed"
        annotations = patch.get("metadata", {}).get("annotations", {})
        ours = [k for k in annotations if k.startswith(f"{self.prefix}/") and k != marker]
        if marker in annotations and not ours:
            del annotations[marker]
            if not annotations:
                del patch["metadata"]["annotations"]
            if not patch["metadata"]:
                del patch["metadata"]


def _key(body: kopf.Body) -> Key:
    """As triggers.py keys it: a ModelDeployment by name, another kind by kind/name."""
    name = body.metadata.name or ""
    if body.get("kind", names.KIND) != names.KIND:
        name = f"{body['kind']}/{name}"
    return (body.metadata.namespace or "", name)
