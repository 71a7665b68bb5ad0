"""A real node for the end-to-end tests: containerd, runc, CNI, the kubelet and kube-proxy.

The binaries are found the way envtest finds its own: ``kubelet``, ``kube-proxy`` and a static
``pause`` beside the control plane's (``KUBEBUILDER_ASSETS`` or the newest
``~/.local/share/kubebuilder-envtest/k8s/*``, built from the same Kubernetes tree); containerd,
runc, the CNI plugins and iptables from Debian's packages. The images come from ``make images``
(``MODELPLANE_IMAGES``, else ``~/.cache/modelplane/images``); nothing is ever pulled.

Everything runs inside the network and mount namespaces ``make e2e-node`` gives the test
process (``unshare --net --mount``): the API server, the node's bridge, pod and Service
addresses, iptables rules and every mount live and die there, so the host keeps its own
network, sysctls and mounts. What the namespaces cannot hold (cgroups, processes that
outlive their parent) is removed on teardown.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path

import requests

from modelplane_testkit.control_plane import (
    ApiServer,
    LocalControlPlane,
    Process,
    find_assets,
    free_port,
    spawn,
)

NODE_ENV = "MODELPLANE_NODE"  # set by `make e2e-node`, which runs the tests in their namespaces
IMAGES_ENV = "MODELPLANE_IMAGES"
IMAGES_HOME = Path.home() / ".cache" / "modelplane" / "images"
NODE_BINARIES = ("kubelet", "kube-proxy", "pause")
SYSTEM_BINARIES = ("containerd", "ctr", "runc", "iptables", "ip")
CNI_BIN = Path("/usr/lib/cni")
CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")
HOW_TO_GET_THEM = (
    "no real node: needs root, `apt-get install containerd runc containernetworking-plugins "
    "iptables`, kubelet, kube-proxy and a static pause built from the control plane's "
    "Kubernetes tree beside its binaries, and `make images` (README: 'Run it on a real node')"
)
NODE_NAME = "modelplane-e2e-node"
BRIDGE = "mp0"
NODE_IP = "10.244.0.1"
POD_SUBNET = "10.244.0.0/24"
SERVICE_RANGE = "10.96.0.0/12"  # the control plane's --service-cluster-ip-range
PAUSE_IMAGE = "localhost/modelplane-e2e/pause:local"
# One per run: cgroups are not namespaced, and a run's teardown kills what is under its root.
CGROUP_ROOT = f"modelplane-e2e-{os.getpid()}"
START_TIMEOUT = 120.0
# The kubelet sets these host-wide unless they already hold its values: inside the test's
# mount namespace, files holding its values are bound over them, so the host keeps its own.
KUBELET_SYSCTLS = {
    "vm/overcommit_memory": "1",
    "vm/panic_on_oom": "0",
    "kernel/panic": "10",
    "kernel/panic_on_oops": "1",
    "kernel/keys/root_maxkeys": "1000000",
    "kernel/keys/root_maxbytes": "25000000",
}
# Paths containerd 1.6 and the kubelet use whatever they are told: a tmpfs of the test's own.
FIXED_PATHS = (Path("/run/containerd"), Path("/var/lib/cni"), Path("/var/log/containers"))


def images_dir() -> Path:
    return Path(os.environ.get(IMAGES_ENV) or IMAGES_HOME)


def image_archives() -> list[Path]:
    return sorted(images_dir().glob("*.tar"))


def unavailable() -> str | None:
    """Why a node cannot start here, or None."""
    if os.geteuid() != 0:
        return f"needs root; {HOW_TO_GET_THEM}"
    assets = find_assets()
    if assets is None or not all((assets / name).exists() for name in NODE_BINARIES):
        return HOW_TO_GET_THEM
    if not all(shutil.which(name) for name in SYSTEM_BINARIES):
        return HOW_TO_GET_THEM
    if not all((CNI_BIN / name).exists() for name in CNI_PLUGINS):
        return HOW_TO_GET_THEM
    if not image_archives():
        return f"no images in {images_dir()}: run `make images`; {HOW_TO_GET_THEM}"
    return None


def in_private_namespaces() -> bool:
    """A fresh network namespace (nothing but loopback) and a mount namespace that is not
    the parent's: what `make e2e-node` gives the tests, so nothing they set up reaches the host."""
    try:
        private_mounts = os.readlink("/proc/self/ns/mnt") != os.readlink(
            f"/proc/{os.getppid()}/ns/mnt"
        )
        links = _run("ip", "-o", "link", "show").splitlines()
    except (OSError, RuntimeError):
        return False
    return private_mounts and [line.split(":")[1].strip() for line in links] == ["lo"]


def _run(*args: str, timeout: float = 60, check: bool = True) -> str:
    result = subprocess.run(
        list(args), capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def pause_image_archive(pause: Path, target: Path) -> Path:
    """A docker-archive image holding only the static pause binary (the sandbox image)."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        info = tarfile.TarInfo("pause")
        info.size, info.mode = pause.stat().st_size, 0o755
        with pause.open("rb") as binary:
            tar.addfile(info, binary)
    layer_bytes = layer.getvalue()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{sha256(layer_bytes).hexdigest()}"]},
        }
    ).encode()
    config_name = f"{sha256(config).hexdigest()}.json"
    manifest = json.dumps(
        [{"Config": config_name, "RepoTags": [PAUSE_IMAGE], "Layers": ["layer.tar"]}]
    ).encode()
    with tarfile.open(target, mode="w") as archive:
        for name, data in (
            ("layer.tar", layer_bytes),
            (config_name, config),
            ("manifest.json", manifest),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return target


@dataclass
class LocalNode:
    """One node, ``NODE_NAME``, registered with ``api``; everything under ``workdir``."""

    api: ApiServer
    assets: Path
    workdir: Path
    processes: list[Process] = field(default_factory=list)
    created_dirs: list[Path] = field(default_factory=list)
    cgroups: list[Path] = field(default_factory=list)

    @property
    def socket(self) -> Path:
        return self.workdir / "containerd" / "containerd.sock"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._private_mounts()
        self._cgroup_root()
        self._containerd()
        self.import_images([pause_image_archive(self.assets / "pause", self.workdir / "pause.tar")])
        self.import_images(image_archives())
        self._kubelet()
        self._kube_proxy()
        self._wait_ready()

    # --- the host, kept as it was ------------------------------------------------------------

    def _private_mounts(self) -> None:
        sysctls = self.workdir / "sysctls"
        sysctls.mkdir(exist_ok=True)
        for key, value in KUBELET_SYSCTLS.items():
            held = sysctls / key.replace("/", ".")
            held.write_text(value + "\n")
            _run("mount", "--bind", str(held), f"/proc/sys/{key}")
        for path in FIXED_PATHS:
            if not path.exists():
                path.mkdir(parents=True)
                self.created_dirs.append(path)
            _run("mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", str(path))

    def _cgroup_root(self) -> None:
        """The kubelet's cgroupRoot, under every v1 hierarchy (cgroups are not namespaced)."""
        for hierarchy in Path("/sys/fs/cgroup").iterdir():
            if not (hierarchy / "cgroup.procs").exists() or hierarchy.name == "unified":
                continue
            own = hierarchy / CGROUP_ROOT
            own.mkdir(exist_ok=True)
            self.cgroups.append(own)
            for inherited in ("cpuset.cpus", "cpuset.mems"):
                if (own / inherited).exists():
                    (own / inherited).write_text((hierarchy / inherited).read_text())

    # --- the components ----------------------------------------------------------------------

    def _spawn(self, name: str, *args: str) -> None:
        self.processes.append(spawn(name, list(args), self.workdir))

    def _containerd(self) -> None:
        root = self.workdir / "containerd"
        cni = self.workdir / "cni"
        (cni / "net.d").mkdir(parents=True, exist_ok=True)
        (cni / "net.d" / "10-modelplane-e2e.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "0.4.0",
                    "name": "modelplane-e2e",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": BRIDGE,
                            "isGateway": True,
                            "ipMasq": False,
                            "hairpinMode": True,
                            "ipam": {
                                "type": "host-local",
                                "ranges": [[{"subnet": POD_SUBNET, "gateway": NODE_IP}]],
                                # No default route: pods reach each other and Services only.
                                "routes": [{"dst": SERVICE_RANGE}],
                                "dataDir": str(cni / "ipam"),
                            },
                        },
                        {"type": "portmap", "capabilities": {"portMappings": True}},
                    ],
                }
            )
        )
        config = root / "config.toml"
        root.mkdir(exist_ok=True)
        config.write_text(
            f"""version = 2
root = "{root / "root"}"
state = "{root / "state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{self.socket}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{root / "opt"}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "{shutil.which("runc")}"
        Root = "{root / "runc"}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{cni / "net.d"}"
"""
        )
        self._spawn("containerd", "containerd", "--config", str(config))
        self._wait(lambda: self._ctr("version", check=False) is not None, "containerd")

    def _ctr(self, *args: str, check: bool = True, timeout: float = 300) -> str | None:
        result = subprocess.run(
            ["ctr", "--address", str(self.socket), "--namespace", "k8s.io", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            if check:
                raise RuntimeError(f"ctr {' '.join(args)}: {result.stderr.strip()}")
            return None
        return result.stdout

    def import_images(self, archives: list[Path]) -> None:
        for archive in archives:
            self._ctr("images", "import", "--no-unpack=false", str(archive))

    def image_names(self) -> list[str]:
        listing = self._ctr("images", "list", "--quiet") or ""
        return listing.split()

    def _kubelet(self) -> None:
        kubelet = self.workdir / "kubelet"
        kubelet.mkdir(exist_ok=True)
        resolv = self.workdir / "resolv.conf"
        resolv.write_text("nameserver 127.0.0.1\n")
        config = kubelet / "config.yaml"
        config.write_text(
            json.dumps(
                {
                    "apiVersion": "kubelet.config.k8s.io/v1beta1",
                    "kind": "KubeletConfiguration",
                    "address": NODE_IP,
                    "port": 10250,
                    "readOnlyPort": 0,
                    "healthzBindAddress": "127.0.0.1",
                    "healthzPort": free_port(),
                    "authentication": {
                        "anonymous": {"enabled": True},
                        "webhook": {"enabled": False},
                    },
                    "authorization": {"mode": "AlwaysAllow"},
                    "containerRuntimeEndpoint": f"unix://{self.socket}",
                    "cgroupDriver": "cgroupfs",
                    "cgroupRoot": f"/{CGROUP_ROOT}",
                    "failCgroupV1": False,
                    "failSwapOn": False,
                    "oomScoreAdj": 0,
                    "protectKernelDefaults": False,
                    "resolvConf": str(resolv),
                    "clusterDomain": "cluster.local",
                    "podLogsDir": str(self.workdir / "pod-logs"),
                    # ConfigMap volumes are refreshed on the pod sync: 1 minute by default.
                    "syncFrequency": "10s",
                    "evictionHard": {
                        "memory.available": "100Mi",
                        "nodefs.available": "1%",
                        "imagefs.available": "1%",
                        "nodefs.inodesFree": "1%",
                    },
                    "imageGCHighThresholdPercent": 100,
                    "imageGCLowThresholdPercent": 99,
                    "serializeImagePulls": False,
                    "registerNode": True,
                }
            )
        )
        self._spawn(
            "kubelet",
            str(self.assets / "kubelet"),
            "--config", str(config),
            "--kubeconfig", str(self.api.kubeconfig),
            "--root-dir", str(kubelet / "root"),
            "--cert-dir", str(kubelet / "pki"),
            "--hostname-override", NODE_NAME,
            "--node-ip", NODE_IP,
            "--v", "2",
        )  # fmt: skip

    def _kube_proxy(self) -> None:
        config = self.workdir / "kube-proxy.yaml"
        config.write_text(
            json.dumps(
                {
                    "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
                    "kind": "KubeProxyConfiguration",
                    "clientConnection": {"kubeconfig": str(self.api.kubeconfig)},
                    "mode": "iptables",
                    "hostnameOverride": NODE_NAME,
                    "clusterCIDR": POD_SUBNET,
                    "bindAddress": NODE_IP,
                    "healthzBindAddress": f"127.0.0.1:{free_port()}",
                    "metricsBindAddress": f"127.0.0.1:{free_port()}",
                    "oomScoreAdj": 0,
                    # Zeros leave the host's conntrack table size and timeouts alone.
                    "conntrack": {
                        "maxPerCore": 0,
                        "min": 0,
                        "tcpEstablishedTimeout": "0s",
                        "tcpCloseWaitTimeout": "0s",
                    },
                    "iptables": {"localhostNodePorts": False},
                }
            )
        )
        self._spawn("kube-proxy", str(self.assets / "kube-proxy"), "--config", str(config))

    def _wait(self, ready: object, what: str, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for process in self.processes:
                if process.popen.poll() is not None:
                    tail = process.log.read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"{process.name} exited: {tail}")
            if callable(ready) and ready():
                return
            time.sleep(0.5)
        raise RuntimeError(f"{what} not ready after {timeout}s")

    def _wait_ready(self) -> None:
        http = self.api.session()

        def node_ready() -> bool:
            with contextlib.suppress(requests.RequestException):
                node = http.get(f"{self.api.server}/api/v1/nodes/{NODE_NAME}", timeout=5)
                if node.status_code == 200:
                    conditions = node.json().get("status", {}).get("conditions", [])
                    untainted = not node.json().get("spec", {}).get("taints")
                    return untainted and any(
                        c["type"] == "Ready" and c["status"] == "True" for c in conditions
                    )
            return False

        self._wait(node_ready, f"node {NODE_NAME} Ready and untainted")

    # --- teardown ----------------------------------------------------------------------------

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.name != "containerd" and process.popen.poll() is None:
                process.popen.terminate()
        for process in self.processes:
            if process.name != "containerd":
                _wait_or_kill(process.popen)
        with contextlib.suppress(Exception):
            for task in (self._ctr("tasks", "list", "--quiet", check=False) or "").split():
                self._ctr("tasks", "kill", "--signal", "SIGKILL", task, check=False, timeout=20)
        for process in self.processes:
            if process.popen.poll() is None:
                process.popen.terminate()
                _wait_or_kill(process.popen)
        self.processes.clear()
        self._kill_leftovers()
        self._unmount()
        # runc also makes the pods' cgroups in the v2 hierarchy of a hybrid host.
        for cgroup in {*self.cgroups, *Path("/sys/fs/cgroup").glob(f"*/{CGROUP_ROOT}")}:
            _remove_cgroup(cgroup)
        for path in reversed(self.created_dirs):
            with contextlib.suppress(OSError):
                path.rmdir()

    def _kill_leftovers(self) -> None:
        """Shims outlive containerd by design, and take their containers' processes along."""
        marker = str(self.workdir).encode()
        for _ in range(3):
            found = False
            for cgroup in self.cgroups:
                for procs in cgroup.rglob("cgroup.procs"):
                    for pid in procs.read_text().split():
                        found = True
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(int(pid), signal.SIGKILL)
            for proc in Path("/proc").iterdir():
                if not proc.name.isdigit() or int(proc.name) == os.getpid():
                    continue
                with contextlib.suppress(OSError):
                    if marker in (proc / "cmdline").read_bytes():
                        found = True
                        os.kill(int(proc.name), signal.SIGKILL)
            if not found:
                return
            time.sleep(1)

    def _unmount(self) -> None:
        """Every mount under the work directory (containers, volumes) and the ones made at
        start, deepest first."""
        mine = [str(self.workdir), *map(str, FIXED_PATHS), "/proc/sys/"]
        for line in reversed(Path("/proc/self/mounts").read_text().splitlines()):
            point = line.split()[1].replace("\\040", " ")
            if any(point == root or point.startswith(root.rstrip("/") + "/") for root in mine):
                subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def _wait_or_kill(popen: subprocess.Popen[bytes]) -> None:
    try:
        popen.wait(timeout=20)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.wait(timeout=10)


def _remove_cgroup(cgroup: Path) -> None:
    for child in sorted((p for p in cgroup.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            child.rmdir()
    with contextlib.suppress(OSError):
        cgroup.rmdir()


def bridge_network() -> None:
    """The node's bridge, forwarding and the Service range's route: in this namespace only."""
    _run("ip", "link", "set", "lo", "up")
    _run("ip", "link", "add", BRIDGE, "type", "bridge")
    _run("ip", "addr", "add", f"{NODE_IP}/24", "dev", BRIDGE)
    _run("ip", "link", "set", BRIDGE, "up")
    _run("ip", "route", "add", SERVICE_RANGE, "dev", BRIDGE)
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
    # Pod -> Service -> pod on one bridge: the reply must pass iptables to be un-NATed.
    Path("/proc/sys/net/bridge/bridge-nf-call-iptables").write_text("1\n")
    # Load tests open a connection per request (each is routed anew by kube-proxy): tens of
    # thousands a minute would run out of ports held in TIME_WAIT.
    Path("/proc/sys/net/ipv4/ip_local_port_range").write_text("1024 65000\n")
    Path("/proc/sys/net/ipv4/tcp_tw_reuse").write_text("1\n")


@contextlib.contextmanager
def cluster_with_node(workdir: Path) -> Iterator[tuple[ApiServer, LocalNode]]:
    """A control plane and one real node, both inside this process's own namespaces."""
    if not in_private_namespaces():
        raise LookupError("the node tests run inside namespaces of their own: `make e2e-node`")
    assets = find_assets()
    if (why := unavailable()) is not None or assets is None:
        raise LookupError(why or HOW_TO_GET_THEM)
    bridge_network()
    plane = LocalControlPlane(assets, workdir / "control-plane", node_address=NODE_IP)
    node: LocalNode | None = None
    try:
        api = plane.start()
        node = LocalNode(api, assets, workdir / "node")
        node.start()
        yield api, node
    finally:
        if node is not None:
            node.stop()
        plane.stop()
