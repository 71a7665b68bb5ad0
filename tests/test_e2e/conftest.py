"""The real control plane for the end-to-end tests; `make e2e` runs them.

They skip, with one line saying why, unless MODELPLANE_E2E=1 (set by `make e2e`)
and a control plane is available (see modelplane_testkit.control_plane).
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from kopf.testing import KopfRunner

from modelplane_testkit import helm
from modelplane_testkit.control_plane import CLUSTER_ENV, ApiServer, control_plane
from modelplane_testkit.kubelet import KubeletPlayer
from modelplane_testkit.operator_harness import kopf_operator
from modelplane_testkit.real_cluster import RealCluster

REPO = Path(__file__).resolve().parents[2]
RELEASE_NAMESPACE = helm.INSTALL_NAMESPACE
OPERATOR_ACCOUNT = helm.RELEASE  # the chart's ServiceAccount: <release> for release "modelplane"
OPERATOR_USER = f"system:serviceaccount:{RELEASE_NAMESPACE}:{OPERATOR_ACCOUNT}"


def start_or_skip(
    workdir: Path, admission_plugins: tuple[str, ...] = (), *, fresh: bool = False
) -> Iterator[ApiServer]:
    """A control plane; ``fresh`` (or admission plugins) needs one started here."""
    if os.environ.get("MODELPLANE_E2E") != "1":
        pytest.skip("real control-plane tests run with `make e2e`")
    if (fresh or admission_plugins) and os.environ.get(CLUSTER_ENV):
        pytest.skip("needs a control plane started here (its own admission plugins, empty)")
    try:
        with control_plane(workdir, admission_plugins) as server:
            yield server
    except LookupError as missing:
        pytest.skip(str(missing))


def local_only(server: ApiServer, needs: str) -> None:
    """Skip where the cluster is not the local control plane (it has a kubelet, no audit log)."""
    if not server.local:
        pytest.skip(f"needs the local control plane's {needs}")


@pytest.fixture(scope="session", autouse=True)
def _connections_closed_inside_the_run() -> Iterator[None]:
    """kopf's and the kubernetes client's pooled connections to the API server are closed
    by the garbage collector; collect once more as the last test is torn down, where the
    e2e items ignore the ResourceWarnings (see tests/conftest.py), not after the session,
    where every warning is an error."""
    yield
    gc.collect()


@pytest.fixture(scope="session")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    yield from start_or_skip(tmp_path_factory.mktemp("control-plane"))


@pytest.fixture(scope="session")
def admin(api_server: ApiServer) -> RealCluster:
    return RealCluster(api_server)


def helm_install(server: ApiServer, release: str, values: dict[str, object] | None = None) -> None:
    """`helm install` of the chart into the real API server."""
    helm.install_release(server.kubeconfig, release, values)


@pytest.fixture(scope="session")
def installed(api_server: ApiServer) -> ApiServer:
    """The chart installed with default values: CRD, ServiceAccount, ClusterRole, binding."""
    helm_install(api_server, helm.RELEASE)
    api_server.wait_established("modeldeployments.modelplane.io", "modelconsumers.modelplane.io")
    return api_server


def account_token(server: ApiServer, namespace: str, account: str) -> str:
    """A token for a ServiceAccount, from the TokenRequest API (as a pod would get one)."""
    token = server.kubectl("create", "token", account, "-n", namespace, "--duration=2h").strip()
    assert token
    return token


@pytest.fixture(scope="session")
def operator_token(installed: ApiServer) -> str:
    return account_token(installed, RELEASE_NAMESPACE, OPERATOR_ACCOUNT)


@pytest.fixture(scope="session")
def kubelet(api_server: ApiServer) -> Iterator[KubeletPlayer]:
    local_only(api_server, "played kubelet (a real one would need the runtime images)")
    player = KubeletPlayer(api_server)
    player.register_node("cpu-1")
    player.register_node("cpu-2")
    with player:
        yield player


@contextmanager
def operator_as(
    server: ApiServer,
    token: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str] | None = None,
) -> Iterator[KopfRunner]:
    kubeconfig = server.kubeconfig_for(tmp_path / "operator.kubeconfig", token)
    with kopf_operator(kubeconfig, monkeypatch, args, timeout=120) as runner:
        yield runner


@pytest.fixture
def operator(
    installed: ApiServer, operator_token: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[KopfRunner]:
    with operator_as(installed, operator_token, tmp_path, monkeypatch) as runner:
        yield runner
