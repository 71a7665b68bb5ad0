"""modelplane's contract: what the operator and the runtime both rely on.

The ModelDeployment spec and its loader, names and labels, the runtime's
settings and how a spec becomes them, and every fact both processes share.
Dependencies point one way: operator -> modelplane_api <- runtime.
"""
