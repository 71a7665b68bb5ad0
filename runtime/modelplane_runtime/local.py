"""Settings for serving on a laptop: from an .onnx file or a ModelDeployment YAML."""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import urlsplit

from modelplane_api import facts
from modelplane_api.cli import CommandFailed, UsageError
from modelplane_api.settings import RuntimeSettings
from modelplane_api.spec import is_model_tree

CACHE = Path.home() / ".cache" / "modelplane" / "models"


def settings_for_local_serving(
    *,
    model: str | None,
    manifest: str | None,
    name: str | None,
    host: str,
    port: int,
    allow_cpu_fallback: bool,
    access: str | None = None,
    graph: str | None = None,
) -> RuntimeSettings:
    settings = _model_settings(
        model=model,
        manifest=manifest,
        name=name,
        host=host,
        port=port,
        allow_cpu_fallback=allow_cpu_fallback,
    )
    if graph is not None:
        if model is None or not Path(model).is_dir():
            raise UsageError("--graph names the graph file in a --model directory")
        settings = settings.model_copy(update={"model_graph": graph})
    if access is None:
        # A restricted manifest's access file is the one the operator mounts in a pod.
        return settings.model_copy(update={"access_file": None})
    if not Path(access).is_file():
        raise UsageError(f"--access {access}: no such file")
    return settings.model_copy(update={"access_file": Path(access)})


def _model_settings(
    *,
    model: str | None,
    manifest: str | None,
    name: str | None,
    host: str,
    port: int,
    allow_cpu_fallback: bool,
) -> RuntimeSettings:
    if model is not None:
        path = Path(model)
        if not path.exists():
            raise UsageError(f"--model {model}: no such file or directory")
        # Everything the flags do not name still comes from MODELPLANE_* variables.
        from_env = RuntimeSettings()
        return from_env.model_copy(
            update={
                "model_name": name or path.stem,
                "model_path": path,
                "host": host,
                "port": port,
                "allow_cpu_fallback": allow_cpu_fallback or from_env.allow_cpu_fallback,
            }
        )
    assert manifest is not None
    return _from_manifest(Path(manifest), name, host, port, allow_cpu_fallback)


def _from_manifest(
    manifest: Path, name: str | None, host: str, port: int, allow_cpu_fallback: bool
) -> RuntimeSettings:
    # The contract's parser and mapping: a local run gets exactly the pod's settings.
    from modelplane_api.loader import load_model_deployments
    from modelplane_api.settings import runtime_settings
    from modelplane_api.spec import InvalidSpecError

    try:
        deployments = load_model_deployments(manifest)
    except InvalidSpecError as exc:
        raise CommandFailed(*exc.problems) from None
    if name is not None:
        deployments = [md for md in deployments if md.name == name]
    if len(deployments) != 1:
        raise UsageError(
            f"{manifest}: holds {len(deployments)} matching ModelDeployments; pick one with --name"
        )
    md = deployments[0]
    uri = md.spec.model.uri
    parts = urlsplit(uri)
    if parts.scheme == "pvc":
        raise UsageError(f"{uri}: a PVC lives in the cluster; serve the file with --model")
    copied = parts.scheme != "file" or md.spec.model.copy_to_pod
    if not copied:
        path = Path(parts.path)  # read in place, verified by the runtime as it loads
    else:
        from modelplane_runtime.fetch import fetch, fetch_tree

        # Keyed by the digest too: a folder exists only once fetched and verified against
        # it (fetches are atomic), so a changed sha256 is never served from an old fetch.
        # A local file (copyToPod) is copied again on every start, as in a pod.
        key = f"{uri}\n{md.spec.model.sha256 or ''}"
        folder = CACHE / hashlib.sha256(key.encode()).hexdigest()[:16]
        again = parts.scheme == "file"
        if is_model_tree(uri):
            path = folder / facts.FETCHED_MODEL_DIR
            if again or not path.is_dir():
                fetch_tree(uri, path, sha256=md.spec.model.sha256)
        else:
            path = folder / facts.FETCHED_MODEL_FILE
            if again or not path.is_file():
                fetch(uri, path, sha256=md.spec.model.sha256)
    pod_settings = runtime_settings(md)
    # A directory or an archive was verified as it was fetched, as by a pod's fetch (an
    # unpacked archive has no manifest to check again); a single file is checked again.
    fetched_tree = copied and is_model_tree(uri)
    return pod_settings.model_copy(
        update={
            "model_path": path,
            "model_sha256": None if fetched_tree else md.spec.model.sha256,
            "host": host,
            "port": port,
            "allow_cpu_fallback": allow_cpu_fallback or pod_settings.allow_cpu_fallback,
        }
    )
