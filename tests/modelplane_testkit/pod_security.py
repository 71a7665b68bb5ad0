"""Pod Security Standards, "restricted" profile (Kubernetes 1.29+), as a checker.

Follows https://kubernetes.io/docs/concepts/security/pod-security-standards/:
every baseline control plus the restricted ones. Returns violations, [] if none.
"""

from __future__ import annotations

from typing import Any

ALLOWED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}


def _containers(pod: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{field}[{c.get('name', i)}]", c)
        for field in ("initContainers", "containers", "ephemeralContainers")
        for i, c in enumerate(pod.get(field) or [])
    ]


def _seccomp_ok(context: dict[str, Any] | None) -> bool | None:
    profile = (context or {}).get("seccompProfile")
    if profile is None:
        return None
    return profile.get("type") in {"RuntimeDefault", "Localhost"}


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    pod_ctx = pod.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            problems.append(f"{field} must not be true")
    if (pod_ctx.get("windowsOptions") or {}).get("hostProcess"):
        problems.append("hostProcess must not be true")
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUME_TYPES:
            problems.append(f"volume {volume.get('name')}: type {sorted(kinds)} not allowed")
    for sysctl in pod_ctx.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            problems.append(f"sysctl {sysctl.get('name')} not allowed")
    pod_non_root = pod_ctx.get("runAsNonRoot") is True
    if pod_ctx.get("runAsUser") == 0:
        problems.append("securityContext.runAsUser must not be 0")
    pod_seccomp = _seccomp_ok(pod_ctx)
    if pod_seccomp is False:
        problems.append("securityContext.seccompProfile must be RuntimeDefault or Localhost")
    se = pod_ctx.get("seLinuxOptions") or {}
    if se.get("type", "") not in SELINUX_TYPES or se.get("user") or se.get("role"):
        problems.append("securityContext.seLinuxOptions not allowed")

    for where, container in _containers(pod):
        ctx = container.get("securityContext") or {}
        if ctx.get("privileged"):
            problems.append(f"{where}: privileged must not be true")
        if ctx.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation must be false")
        caps = ctx.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            problems.append(f"{where}: capabilities.drop must include ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            problems.append(f"{where}: capabilities.add may hold only NET_BIND_SERVICE")
        non_root = ctx.get("runAsNonRoot")
        if non_root is False or (non_root is None and not pod_non_root):
            problems.append(f"{where}: runAsNonRoot must be true (pod or container)")
        if ctx.get("runAsUser") == 0:
            problems.append(f"{where}: runAsUser must not be 0")
        seccomp = _seccomp_ok(ctx)
        if seccomp is False or (seccomp is None and pod_seccomp is not True):
            problems.append(f"{where}: seccompProfile must be RuntimeDefault or Localhost")
        if ctx.get("procMount", "Default") != "Default":
            problems.append(f"{where}: procMount must be Default")
        cse = ctx.get("seLinuxOptions") or {}
        if cse.get("type", "") not in SELINUX_TYPES or cse.get("user") or cse.get("role"):
            problems.append(f"{where}: seLinuxOptions not allowed")
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                problems.append(f"{where}: hostPort must not be set")
    return problems


def pod_spec_of(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The pod spec inside a workload object, or None for objects without pods."""
    kind = obj.get("kind")
    if kind == "Pod":
        spec: dict[str, Any] = obj["spec"]
        return spec
    if kind in {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}:
        template: dict[str, Any] = obj["spec"]["template"]["spec"]
        return template
    return None
