"""Pure renderers: a ModelDeployment and the operator config in, Kubernetes objects out."""

from modelplane_operator.render.children import (
    CHILD_KINDS,
    render_children,
    render_deployment,
    render_hpa,
    render_pdb,
    render_service,
    runtime_settings,
    service_url,
)

__all__ = [
    "CHILD_KINDS",
    "render_children",
    "render_deployment",
    "render_hpa",
    "render_pdb",
    "render_service",
    "runtime_settings",
    "service_url",
]
