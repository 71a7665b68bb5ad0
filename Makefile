# Two entry points for a newcomer: `make demo` and `make test`.
# Each creates .venv and installs what it needs on first use.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch==2.13.0 is a CPU wheel; an unpinned torch pulls a multi-GB CUDA build.
TORCH := torch==2.13.0
STAMP := $(VENV)/.installed
CODE := $(wildcard api operator runtime tests bench)

.PHONY: demo test lint typecheck unit crd manifests golden promtool bench bench-open-loop bench-versus bench-access bench-large bench-operator bench-operator-real clean e2e e2e-node images

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "modelplane needs Python 3.11+")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing modelplane and its dependencies into $(VENV) (first run takes a few minutes)"
	@$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[operator,runtime,export,test,extensions]' '$(TORCH)' \
		2> >(grep -v -e 'is ignored: it is neither' -e 'BuildBackendWarning' >&2 || true)
	@PYTHONPATH=tests $(BIN)/python -m modelplane_testkit.helm install
	@command -v promtool >/dev/null || test -x $(BIN)/promtool || $(MAKE) -s --no-print-directory promtool 2>/dev/null \
		|| echo "no promtool (needs apt-get and Debian's prometheus package): the alert rule tests will skip"
	@touch $(STAMP)

# promtool, from Debian's prometheus package, for the alert rule tests (tests/test_install/
# test_monitoring.py). Only the binary is unpacked into the virtualenv: the package is not
# installed, so its service is never started and the system is left as it was.
promtool:
	@deb=$$(mktemp -d); trap 'rm -rf "$$deb"' EXIT; cd "$$deb"; \
	apt-get download -qq prometheus >/dev/null 2>&1 || { test "$$(id -u)" = 0 \
		&& apt-get update -qq >/dev/null 2>&1 && apt-get download -qq prometheus >/dev/null 2>&1; }; \
	dpkg-deb -x prometheus_*.deb root; \
	install -m 755 root/usr/bin/promtool "$(CURDIR)/$(BIN)/promtool"

demo: $(STAMP)
	@$(BIN)/python -m modelplane_operator.demo
	@$(BIN)/python -m modelplane_runtime.demo

test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check $(CODE)
	$(BIN)/ruff format --check $(CODE)

typecheck: $(STAMP)
	$(BIN)/mypy api/modelplane_api operator/modelplane_operator runtime/modelplane_runtime tests

unit: $(STAMP)
	$(BIN)/python -m pytest

# Regenerate the CRDs from the pydantic spec models, then the chart's copy and install.yaml.
crd: $(STAMP)
	$(BIN)/python -m modelplane_operator.crd manifests/crds
	$(MAKE) manifests

# Copy the CRD into the chart and regenerate manifests/install/install.yaml from the chart.
manifests: $(STAMP)
	PYTHONPATH=tests $(BIN)/python -m modelplane_testkit.helm sync

golden: $(STAMP)
	UPDATE_GOLDEN=1 $(BIN)/python -m pytest -q tests/test_operator/test_render_golden.py

# A model with 2.2 GiB of external weights: fetch (no cache, cold, warm), load, RSS (~3 min).
bench-large: $(STAMP)
	$(BIN)/python bench/large_model.py

# Operator cost at 10/100/500 ModelDeployments against the test emulator, 3 rounds (~4 minutes).
bench-operator: $(STAMP)
	$(BIN)/python bench/operator_scale.py

# The same against a real kube-apiserver (envtest binaries, see `make e2e`).
bench-operator-real: $(STAMP)
	$(BIN)/python bench/operator_scale.py --target real

# Runtime serving: this runtime vs raw onnxruntime, bare Starlette, KServe, MLServer (~10 min;
# then gRPC against REST binary, bench/runtime_grpc.py, ~3 min; then the open-loop figures,
# bench/runtime_open_loop.py, ~7 min; then what oversized and hostile requests cost it,
# bench/runtime_limits.py, ~1 min; peers go into bench/.peers on first use). Needs wrk and
# h2load (Debian) and two cores.
bench: $(STAMP)
	@command -v wrk >/dev/null || { echo "installing wrk from Debian"; apt-get install -y -q wrk >/dev/null; }
	@command -v h2load >/dev/null || { echo "installing h2load from Debian"; apt-get install -y -q nghttp2-client >/dev/null; }
	@$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[bench]' \
		2> >(grep -v -e 'is ignored: it is neither' -e 'BuildBackendWarning' >&2 || true)
	$(BIN)/python bench/runtime_serving.py
	$(BIN)/python bench/runtime_grpc.py --rounds 3
	$(BIN)/python bench/runtime_open_loop.py
	$(BIN)/python bench/runtime_limits.py

# Open loop alone: Poisson arrivals, latency from the intended send time; per server, model and
# protocol the highest rate whose p99 stays under the bound (~7 min on a quiet machine; longer
# while other work shares it. QUICK=1: shorter steps, about half, into a .tmp results file).
bench-open-loop: $(STAMP)
	$(BIN)/python bench/runtime_open_loop.py $(if $(QUICK),--quick)

# This tree's runtime against an earlier revision's, both on one core at once (~2 min):
#   make bench-versus BASELINE=d154a1c
BASELINE ?= HEAD
bench-versus: $(STAMP)
	$(BIN)/python bench/runtime_versus.py --baseline $(BASELINE)

# What checking keys costs: the model restricted to one consumer against it open, both on
# one core at once, 10 rounds (~3 min); writes bench/results/runtime_access_cost.json.
bench-access: $(STAMP)
	$(BIN)/python bench/runtime_versus.py --restricted --rounds 10

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

# The operator and the install on a real control plane (tests/test_e2e): a cluster named by
# MODELPLANE_E2E_KUBECONFIG, or binaries in KUBEBUILDER_ASSETS / ~/.local/share/kubebuilder-envtest.
# Without either, every test skips with one line saying how to get them.
e2e: $(STAMP)
	@MODELPLANE_E2E=1 $(BIN)/python -m pytest tests/test_e2e || test $$? -eq 5  # 5: none could run

# A real node (tests/test_node): the control plane above plus containerd, runc, CNI, the kubelet
# and kube-proxy, the operator as a Pod from its image (`make images` first). As root, inside
# network and mount namespaces of its own (the host's network, sysctls and mounts stay as they
# are). Without the binaries or the images, every test is left out with one line saying why.
e2e-node: $(STAMP)
	@if [ "$$(id -u)" = 0 ]; then wrap="unshare --net --mount --propagation slave --"; else wrap=""; fi; \
	MODELPLANE_NODE=1 $$wrap $(BIN)/python -m pytest tests/test_node $(PYTEST_ARGS) || test $$? -eq 5

# The runtime and operator images from their own Dockerfiles, with no docker daemon or registry:
# buildah, on a python:3.11-slim-bookworm stand-in built from Debian packages (mmdebstrap).
# Writes docker-archives for `ctr -n k8s.io images import`, images.json (references, sizes)
# and buildah's storage to IMAGES_DIR (MODELPLANE_IMAGES, which `make e2e-node` reads, else
# ~/.cache/modelplane/images), outside the repository; smoke-tests each image; needs
# root (~4 min the first time here; unchanged images are not rebuilt; FORCE=1 rebuilds all).
IMAGES_DIR ?= $(or $(MODELPLANE_IMAGES),$(HOME)/.cache/modelplane/images)
images:
	IMAGES_DIR='$(IMAGES_DIR)' PYTHON='$(PYTHON)' images/build.sh
