"""The ModelConsumer reconcile: its key in a Secret, rotation, and its status.

Level-based like the ModelDeployment's: it reads the key Secret (by name: the
operator never lists or watches Secrets), creates it with a fresh key when it is
missing, issues a new key when ``spec.key.rotation`` changed (the previous one
keeps working until its ``notAfter``), and writes a status saying which keys work
(digest and fingerprint, never the key) and which models the consumer may call.
The models' access descriptions are built from these statuses (reconcile.py).
It knows nothing of kopf; errors are the domain exceptions of reconcile.py.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from modelplane_api import access, names
from modelplane_api.consumer import (
    KEY_SECRET_DATA,
    ConsumerKeyStatus,
    ModelConsumer,
    ModelConsumerStatus,
    parse_model_consumer,
)
from modelplane_api.facts import SHA256_PATTERN
from modelplane_api.spec import Condition, InvalidSpecError
from modelplane_operator.applier import is_controlled_by
from modelplane_operator.kinds import KEY_SECRET, MODEL_CONSUMER
from modelplane_operator.kube import ApiError, KubeApi
from modelplane_operator.reconcile import (
    FORBIDDEN_RETRY_SECONDS,
    RetryLater,
    SpecRejected,
    owner_reference,
    resource_fields,
)
from modelplane_operator.status import Problem, Verdict, kstatus_conditions, status_patch

Obj = dict[str, Any]
log = logging.getLogger("modelplane.operator")

ROTATION_ANNOTATION = f"{names.GROUP}/key-rotation"  # the spec.key.rotation a key was made for
PREVIOUS_KEY_ANNOTATION = f"{names.GROUP}/previous-key-sha256"
PREVIOUS_NOT_AFTER_ANNOTATION = f"{names.GROUP}/previous-key-not-after"
MAX_KEY_BYTES = 1024


@dataclass(frozen=True)
class ConsumerResult:
    secret_written: bool
    status_written: bool
    # When a rotated-out key expires: reconcile again then, so the status drops it.
    recheck_after: float | None = None


def _timestamp(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _encoded(key: str) -> str:
    return base64.b64encode(key.encode()).decode()


def _stored_key(secret: Mapping[str, Any]) -> str | None:
    """The key a Secret holds, or None when it holds none that can be used."""
    raw = (secret.get("data") or {}).get(KEY_SECRET_DATA)
    if not isinstance(raw, str):
        return None
    try:
        key = base64.b64decode(raw, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    return key if 0 < len(key) <= MAX_KEY_BYTES and key.isprintable() else None


def _new_secret(
    consumer: ModelConsumer, body: Mapping[str, Any], rotation: str, previous: dict[str, str]
) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": KEY_SECRET.kind,
        "type": "Opaque",
        "metadata": {
            "name": consumer.key_secret_name,
            "namespace": consumer.namespace,
            "labels": {
                names.LABEL_MANAGED_BY: names.MANAGED_BY,
                names.LABEL_PART_OF: names.PART_OF,
                names.LABEL_INSTANCE: consumer.name,
            },
            "annotations": {ROTATION_ANNOTATION: rotation, **previous},
            "ownerReferences": [owner_reference(body)],
        },
        "data": {KEY_SECRET_DATA: _encoded(access.new_key())},
    }


def _rotation_patch(secret: Mapping[str, Any], previous: str | None, not_after: str) -> Obj:
    """A new key; the current one (if any) becomes the previous, working until not_after.
    The resourceVersion makes it fail rather than lose a concurrent change."""
    annotations: dict[str, str | None] = {
        PREVIOUS_KEY_ANNOTATION: access.key_digest(previous) if previous else None,
        PREVIOUS_NOT_AFTER_ANNOTATION: not_after if previous else None,
    }
    return {
        "metadata": {
            "resourceVersion": secret["metadata"]["resourceVersion"],
            "annotations": annotations,
        },
        "data": {KEY_SECRET_DATA: _encoded(access.new_key())},
    }


def _keys(
    secret: Mapping[str, Any], now: datetime.datetime
) -> tuple[list[ConsumerKeyStatus], bool]:
    """The keys that work, newest first, and whether an expired previous key is still noted."""
    key = _stored_key(secret)
    keys = []
    if key is not None:
        digest = access.key_digest(key)
        keys.append(ConsumerKeyStatus(fingerprint=access.fingerprint(digest), sha256=digest))
    annotations = secret["metadata"].get("annotations") or {}
    previous = annotations.get(PREVIOUS_KEY_ANNOTATION)
    not_after = annotations.get(PREVIOUS_NOT_AFTER_ANNOTATION)
    if not previous:
        return keys, False
    try:
        until = datetime.datetime.fromisoformat(str(not_after))
    except ValueError:
        return keys, True
    if until.tzinfo is None or until <= now:
        return keys, True
    keys.append(
        ConsumerKeyStatus(
            fingerprint=access.fingerprint(previous), sha256=previous, not_after=not_after
        )
    )
    return keys, False


def reconcile_consumer(
    body: Mapping[str, Any],
    api: KubeApi,
    models: Mapping[str, bool],
    *,
    now: Callable[[], datetime.datetime],
) -> ConsumerResult:
    """``models``: the namespace's ModelDeployments, name -> restricted."""
    meta = body["metadata"]
    namespace, name, generation = meta["namespace"], meta["name"], meta.get("generation", 1)
    previous_status: Mapping[str, Any] = body.get("status") or {}
    moment = now().replace(microsecond=0)

    def write_status(status: ModelConsumerStatus, problem: Problem | None, detail: str) -> bool:
        status = status.model_copy(
            update={
                "observed_generation": generation,
                "conditions": consumer_conditions(
                    previous_status, generation, problem, detail, moment
                ),
            }
        )
        dumped = status.model_dump(by_alias=True, exclude_none=True)
        if dumped == previous_status:
            return False
        try:
            patch = status_patch(previous_status, dumped)
            api.patch_status(namespace, name, patch, kind=MODEL_CONSUMER.kind)
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise RetryLater(f"status write failed: {exc}", delay=2.0) from None
        return True

    def report(reason: str, message: str) -> None:
        """Say in status (and once in a Warning event) what the user must fix."""
        unchanged = ModelConsumerStatus.model_validate(previous_status)
        write_status(unchanged, Problem(reason, message), "")
        if _newly(previous_status, reason):
            api.warn(body, reason, message)

    try:
        consumer = parse_model_consumer(resource_fields(body))
    except InvalidSpecError as exc:
        message = "; ".join(exc.problems)
        report("InvalidSpec", message)
        raise SpecRejected("InvalidSpec", message, newly=False) from None

    try:
        secret, wrote = _ensure_key(consumer, body, api, moment)
    except KeySecretNotOwned as exc:
        # No Secret watch: a foreign Secret deleted meanwhile is only seen by looking again.
        report("KeySecretNotOwned", str(exc))
        raise RetryLater(str(exc), delay=30.0) from None
    except ApiError as exc:
        if exc.status in {401, 403}:
            message = f"the API server refused the operator: {exc.message}"
            report("Forbidden", message)
            raise RetryLater(message, delay=FORBIDDEN_RETRY_SECONDS) from None
        if exc.retryable:  # a Secret created or changed meanwhile: read it again
            raise RetryLater(f"key Secret {consumer.key_secret_name}: {exc}", delay=1.0) from None
        message = f"the API server rejected the key Secret: {exc.message}"
        report("SecretRejected", message)
        raise SpecRejected("SecretRejected", message, newly=False) from None

    keys, _ = _keys(secret, moment)
    status, problem, detail = _outcome(consumer, models, keys)
    written = write_status(status, problem, detail)
    if problem is not None and _newly(previous_status, problem.reason):
        api.warn(body, problem.reason, problem.message)
    expiring = [datetime.datetime.fromisoformat(k.not_after) for k in keys if k.not_after]
    recheck = (min(expiring) - moment).total_seconds() + 1 if expiring else None
    return ConsumerResult(wrote, written, recheck)


class KeySecretNotOwned(Exception):
    """The key Secret's name is taken by an object this ModelConsumer did not create."""


def _ensure_key(
    consumer: ModelConsumer, body: Mapping[str, Any], api: KubeApi, now: datetime.datetime
) -> tuple[Obj, bool]:
    """The key Secret, created, rotated or tidied as the spec says; and whether it was written."""
    namespace, secret_name = consumer.namespace, consumer.key_secret_name
    rotation = consumer.spec.key.rotation or ""
    secret = api.get(KEY_SECRET.kind, namespace, secret_name)
    if secret is not None and not is_controlled_by(secret, body["metadata"]["uid"]):
        raise KeySecretNotOwned(
            f"Secret {namespace}/{secret_name} exists and was not created by this "
            "ModelConsumer: set spec.key.secretName to a free name, or delete that Secret"
        )
    if secret is None:
        moved = _moved_key(body, consumer, now)
        created = api.create(_new_secret(consumer, body, rotation, moved))
        log.info(
            "ModelConsumer %s/%s: key issued into Secret %s%s",
            namespace,
            consumer.name,
            secret_name,
            " (the key of the Secret named before works for the overlap)" if moved else "",
        )
        return created, True
    annotations = secret["metadata"].get("annotations") or {}
    current = _stored_key(secret)
    if annotations.get(ROTATION_ANNOTATION, "") != rotation or current is None:
        overlap = consumer.spec.key.overlap_seconds
        keep = current if overlap > 0 else None  # an unusable key is not kept either
        patch = _rotation_patch(secret, keep, _timestamp(now + datetime.timedelta(seconds=overlap)))
        patch["metadata"]["annotations"][ROTATION_ANNOTATION] = rotation
        log.info("ModelConsumer %s/%s: key rotated", namespace, consumer.name)
        return api.merge_patch(KEY_SECRET.kind, namespace, secret_name, patch), True
    _, expired = _keys(secret, now)
    if expired:  # the previous key's overlap is over: forget it
        patch = {
            "metadata": {
                "resourceVersion": secret["metadata"]["resourceVersion"],
                "annotations": {PREVIOUS_KEY_ANNOTATION: None, PREVIOUS_NOT_AFTER_ANNOTATION: None},
            }
        }
        return api.merge_patch(KEY_SECRET.kind, namespace, secret_name, patch), True
    return secret, False


def _moved_key(
    body: Mapping[str, Any], consumer: ModelConsumer, now: datetime.datetime
) -> dict[str, str]:
    """When ``spec.key.secretName`` changed, the key in the Secret it named before keeps
    working for the overlap, as in a rotation: the applications reading that Secret have
    until then to read the new one. (That Secret stays, owned, until the consumer goes:
    the operator cannot delete Secrets.)"""
    status = body.get("status") or {}
    before, keys = status.get("keySecretName"), status.get("keys") or []
    overlap = consumer.spec.key.overlap_seconds
    if overlap <= 0 or not before or before == consumer.key_secret_name or not keys:
        return {}
    digest = keys[0].get("sha256") if isinstance(keys[0], dict) else None
    if not isinstance(digest, str) or not re.fullmatch(SHA256_PATTERN, digest):
        return {}
    not_after = _timestamp(now + datetime.timedelta(seconds=overlap))
    return {PREVIOUS_KEY_ANNOTATION: digest, PREVIOUS_NOT_AFTER_ANNOTATION: not_after}


def _outcome(
    consumer: ModelConsumer, models: Mapping[str, bool], keys: list[ConsumerKeyStatus]
) -> tuple[ModelConsumerStatus, Problem | None, str]:
    """The status for these keys and grants, what is wrong (if anything), and what is right."""
    granted, unknown, open_models = _grants(consumer, models)
    secret_name = consumer.key_secret_name
    status = ModelConsumerStatus(
        key_secret_name=secret_name,
        rotation=consumer.spec.key.rotation,
        keys=keys,
        models=granted,
    )
    detail = f"key {keys[0].fingerprint} in Secret {secret_name}" if keys else ""
    if open_models:
        detail += f"; open to anyone already (access.mode Open): {', '.join(open_models)}"
    if not unknown:
        return status, None, detail
    problem = Problem(
        "ModelNotFound",
        f"spec.models names no ModelDeployment in {consumer.namespace}: {', '.join(unknown)}; "
        "create it or remove it from spec.models (granted meanwhile: "
        f"{', '.join(granted) or 'none'})",
    )
    return status, problem, detail


def _grants(
    consumer: ModelConsumer, models: Mapping[str, bool]
) -> tuple[list[str], list[str], list[str]]:
    """(granted models that exist, named models that do not, granted models that are open)."""
    if access.ALL_MODELS in consumer.spec.models:
        granted = sorted(models)
        unknown: list[str] = []
    else:
        granted = sorted(m for m in consumer.spec.models if m in models)
        unknown = sorted(m for m in consumer.spec.models if m not in models)
    return granted, unknown, [m for m in granted if not models[m]]


def _newly(previous: Mapping[str, Any], reason: str) -> bool:
    ready: Mapping[str, Any] = next(
        (c for c in previous.get("conditions", []) if c.get("type") == "Ready"), {}
    )
    return bool(ready.get("reason") != reason)


def consumer_conditions(
    previous: Mapping[str, Any],
    generation: int,
    problem: Problem | None,
    detail: str,
    now: datetime.datetime,
) -> list[Condition]:
    verdict = (
        Verdict(False, problem.reason, problem.message, problem.stalled)
        if problem is not None
        else Verdict(True, "KeyIssued", detail)
    )
    return kstatus_conditions(previous, generation, verdict, _timestamp(now))
