"""A real Gateway API implementation for the node tests: Traefik v3 as a host process.

Traefik runs beside the node, inside the test's network namespace, with its
``kubernetesGateway`` provider only: it reads GatewayClasses, Gateways, HTTPRoutes and the
Services' EndpointSlices from the test's API server (as its administrator, through the
admin kubeconfig) and forwards to the pods' addresses on the node's bridge. Its one
entrypoint listens on the bridge address, so the Gateway's HTTP listener is
``http://NODE_IP:port``, reachable from the test process and from pods alike.

The binary is found envtest's way: ``MODELPLANE_THIRDPARTY_BIN`` (a directory), else
``~/.local/share/modelplane-thirdparty/bin``; the Gateway API CRDs (the standard channel,
with BackendTLSPolicy and TLSRoute, which Traefik watches whether used or not) from
``MODELPLANE_GATEWAY_API_CRDS``, else the first of :data:`CRD_DIRS` that holds them all.
Nothing is pulled or built here.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelplane_testkit.control_plane import ApiServer, Process
from modelplane_testkit.operator_harness import wait_for
from modelplane_testkit.real_cluster import RealCluster

ASSETS_ENV = "MODELPLANE_THIRDPARTY_BIN"  # as keda_stack.py reads it
ASSETS_HOME = Path.home() / ".local" / "share" / "modelplane-thirdparty" / "bin"
CRDS_ENV = "MODELPLANE_GATEWAY_API_CRDS"
_REPO = Path(__file__).resolve().parents[2]
CRD_DIRS = (
    _REPO.parent / "shared" / "third-party-crds" / "gateway-api-v1.6.1",
    Path("/var/tmp/thirdparty/crds/gateway-api-v1.6.1-standard"),
)
# What Traefik 3.7's provider lists before it serves anything: without one, it waits forever.
CRD_FILES = tuple(
    f"gateway.networking.k8s.io_{kind}.yaml"
    for kind in (
        "gatewayclasses",
        "gateways",
        "httproutes",
        "grpcroutes",
        "referencegrants",
        "backendtlspolicies",
        "tlsroutes",
    )
)
HOW_TO_GET_THEM = (
    f"no gateway: needs a traefik v3 binary in {ASSETS_ENV} or {ASSETS_HOME}, and the Gateway "
    f"API standard-channel CRDs (with backendtlspolicies and tlsroutes) in {CRDS_ENV} or one "
    f"of {', '.join(map(str, CRD_DIRS))}"
)
CONTROLLER_NAME = "traefik.io/gateway-controller"
GATEWAY_CLASS = "traefik"
GROUP = "gateway.networking.k8s.io"
START_TIMEOUT = 60.0
Obj = dict[str, Any]


def find_traefik() -> Path | None:
    named = os.environ.get(ASSETS_ENV)
    binary = Path(named or ASSETS_HOME) / "traefik"
    return binary if binary.is_file() and os.access(binary, os.X_OK) else None


def find_crds() -> Path | None:
    named = os.environ.get(CRDS_ENV)
    for directory in [Path(named)] if named else CRD_DIRS:
        if all((directory / name).is_file() for name in CRD_FILES):
            return directory
    return None


def unavailable() -> str | None:
    """Why no gateway can start here, or None."""
    if find_traefik() is None or find_crds() is None:
        return HOW_TO_GET_THEM
    return None


def gateway_url(api: ApiServer, plural: str, namespace: str | None, name: str = "") -> str:
    scope = f"/namespaces/{namespace}" if namespace else ""
    return f"{api.server}/apis/{GROUP}/v1{scope}/{plural}" + (f"/{name}" if name else "")


def get_route(admin: RealCluster, namespace: str, name: str) -> Obj | None:
    """An HTTPRoute, as the API server holds it; None when there is none."""
    response = admin.http.get(gateway_url(admin.server, "httproutes", namespace, name), timeout=10)
    if response.status_code == 404:
        return None
    response.raise_for_status()
    route: Obj = response.json()
    return route


@dataclass
class Gateway:
    """A Programmed Gateway: where its HTTP listener answers."""

    name: str
    namespace: str
    address: str
    port: int
    process: Process


def _condition(obj: Obj, kind: str) -> Obj:
    conditions = obj.get("status", {}).get("conditions", [])
    return next((c for c in conditions if c.get("type") == kind), {})


def _programmed(admin: RealCluster, namespace: str, name: str) -> Obj | None:
    response = admin.http.get(gateway_url(admin.server, "gateways", namespace, name), timeout=10)
    if response.status_code != 200:
        return None
    gateway: Obj = response.json()
    programmed = _condition(gateway, "Programmed")
    fresh = programmed.get("observedGeneration") == gateway["metadata"]["generation"]
    return gateway if programmed.get("status") == "True" and fresh else None


@contextlib.contextmanager
def traefik_gateway(
    api: ApiServer,
    workdir: Path,
    address: str,
    *,
    port: int = 80,
    name: str = "models",
    namespace: str = "gateways",
) -> Iterator[Gateway]:
    """The Gateway API CRDs, Traefik, a GatewayClass and a Gateway with one HTTP listener on
    ``address:port`` that takes routes from every namespace; yields once it is Programmed."""
    traefik, crds = find_traefik(), find_crds()
    if traefik is None or crds is None:
        raise LookupError(HOW_TO_GET_THEM)
    workdir.mkdir(parents=True, exist_ok=True)
    for crd in CRD_FILES:
        api.kubectl("apply", "--server-side", "-f", str(crds / crd))
    for crd in CRD_FILES:
        plural = crd.removeprefix(f"{GROUP}_").removesuffix(".yaml")
        api.wait_established(f"{plural}.{GROUP}")
    admin = RealCluster(api)
    admin.namespace(namespace)
    process = _start(traefik, api, workdir, address, port)
    try:
        _create(admin, gateway_url(api, "gatewayclasses", None), _gateway_class())
        _create(
            admin,
            gateway_url(api, "gateways", namespace),
            _gateway(name, namespace, port),
        )

        def programmed() -> Obj | None:
            if process.popen.poll() is not None:
                raise RuntimeError(f"traefik exited: {process.log.read_text()[-2000:]}")
            return _programmed(admin, namespace, name)

        wait_for(programmed, f"Gateway {namespace}/{name} Programmed", START_TIMEOUT)
        yield Gateway(name, namespace, address, port, process)
    finally:
        if process.popen.poll() is None:
            process.popen.terminate()
        try:
            process.popen.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.popen.kill()
            process.popen.wait(timeout=10)


def _start(traefik: Path, api: ApiServer, workdir: Path, address: str, port: int) -> Process:
    argv = [
        str(traefik),
        "--global.checkNewVersion=false",
        "--global.sendAnonymousUsage=false",
        "--log.level=INFO",
        # Which backend answered each request, and how: kept beside the log for a failed run.
        "--accesslog=true",
        f"--accesslog.filepath={workdir / 'access.log'}",
        f"--entryPoints.web.address={address}:{port}",
        "--providers.kubernetesgateway=true",
        f"--providers.kubernetesgateway.statusAddress.ip={address}",
        # The route changes the tests make reach the proxy within this long, not the 2 s default.
        "--providers.providersThrottleDuration=500ms",
    ]
    # The provider takes the administrator's kubeconfig (an external cluster client), as the
    # smoke run of this binary did.
    log = workdir / "traefik.log"
    with log.open("wb") as sink:
        popen = subprocess.Popen(
            argv,
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "KUBECONFIG": str(api.kubeconfig)},
        )
    return Process("traefik", popen, log)


def _create(admin: RealCluster, url: str, body: Obj) -> None:
    response = admin.http.post(url, json=body, timeout=10)
    if response.status_code not in {200, 201, 409}:
        raise RuntimeError(f"POST {url}: {response.status_code} {response.text[:500]}")


def _gateway_class() -> Obj:
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": "GatewayClass",
        "metadata": {"name": GATEWAY_CLASS},
        "spec": {"controllerName": CONTROLLER_NAME},
    }


def _gateway(name: str, namespace: str, port: int) -> Obj:
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": "Gateway",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "gatewayClassName": GATEWAY_CLASS,
            "listeners": [
                {
                    "name": "web",
                    "protocol": "HTTP",
                    "port": port,
                    "allowedRoutes": {"namespaces": {"from": "All"}},
                }
            ],
        },
    }
