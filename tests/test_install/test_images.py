"""The container images, checked without a docker daemon.

The Dockerfiles are read for what the renderers and the chart assume (user,
entrypoint, paths, ports); the build stage's steps are replayed here: a wheel is
built from exactly the files the Dockerfiles copy, and the entrypoints run from it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

from modelplane_api.facts import HTTP_PORT as CONTAINER_PORT
from modelplane_api.facts import RUNTIME_COMMAND, RUNTIME_UID
from modelplane_api.facts import SCRATCH_DIRS as SCRATCH_VOLUMES
from modelplane_operator.config import OperatorConfig
from modelplane_testkit import helm
from modelplane_testkit.onnx_models import relu_and_double
from modelplane_testkit.operator_harness import OPERATOR_ARGS

REPO = Path(__file__).resolve().parents[2]
RUNTIME_IMAGES = [REPO / "runtime" / "Dockerfile", REPO / "runtime" / "Dockerfile.gpu"]
OPERATOR_IMAGE = REPO / "operator" / "Dockerfile"
BASE_IMAGE = REPO / "images" / "python-base" / "Dockerfile"
BUILD_SCRIPT = REPO / "images" / "build.sh"
CHART = REPO / "charts" / "modelplane"
# onnxruntime's StringNormalizer (and any op with a `locale` attribute left out) asks for it.
ONNXRUNTIME_LOCALE = "en_US.UTF-8"
LOCALE_ARCHIVE = "/usr/lib/locale/locale-archive"
PIP_WHEEL = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
BUILD_TOOLS = ("gcc", "g++", "build-essential", "make ", "git ", "curl", "wget")

Instruction = tuple[str, str]


def _stages(dockerfile: Path) -> list[list[Instruction]]:
    """(INSTRUCTION, arguments) per build stage, continuation lines joined."""
    text = dockerfile.read_text().replace("\\\n", " ")
    stages: list[list[Instruction]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction.upper(), rest.strip()))
    return stages


def _final(dockerfile: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for instruction, rest in _stages(dockerfile)[-1]:
        found.setdefault(instruction, []).append(rest)
    return found


def _env(final: dict[str, list[str]]) -> dict[str, str]:
    pairs = " ".join(final["ENV"]).split()
    return dict(pair.split("=", 1) for pair in pairs)


def _copied_sources(dockerfile: Path) -> list[str]:
    build = _stages(dockerfile)[0]
    return [rest.split()[0] for instruction, rest in build if instruction == "COPY"]


@pytest.mark.parametrize("dockerfile", [*RUNTIME_IMAGES, OPERATOR_IMAGE], ids=lambda p: p.name)
def test_multi_stage_non_root_numeric_user_no_build_tools(dockerfile: Path) -> None:
    assert len(_stages(dockerfile)) >= 2
    final = _final(dockerfile)
    assert final["USER"] == [f"{RUNTIME_UID}:{RUNTIME_UID}"]
    assert f"--uid {RUNTIME_UID}" in " ".join(final["RUN"])
    installs = " ".join(final.get("RUN", []))
    assert "pip install" not in installs
    assert not [tool for tool in BUILD_TOOLS if tool in installs + " "]
    assert "COPY" in final, "the final stage copies the built virtualenv"
    assert all("--from=build" in c for c in final["COPY"])


@pytest.mark.parametrize("dockerfile", RUNTIME_IMAGES, ids=lambda p: p.name)
def test_runtime_image_matches_what_the_rendered_pods_assume(dockerfile: Path) -> None:
    final = _final(dockerfile)
    env = _env(final)
    (entrypoint,) = final["ENTRYPOINT"]
    assert tuple(json.loads(entrypoint)) == RUNTIME_COMMAND
    # The pods' `command` is RUNTIME_COMMAND: `python` must be the venv's, via PATH.
    assert env["PATH"].startswith("/opt/modelplane/bin:")
    writable = {path for _, path in SCRATCH_VOLUMES}
    assert f"{env['HOME']}/.cache" in writable
    assert any(env["BENTOML_HOME"].startswith(path + "/") for path in writable)
    assert env["ORT_DISABLE_TELEMETRY"] == "1"
    assert final["EXPOSE"] == [str(CONTAINER_PORT)]


def test_gpu_runtime_installs_onnxruntime_gpu_on_cuda() -> None:
    gpu, cpu = _stages(RUNTIME_IMAGES[1]), _stages(RUNTIME_IMAGES[0])
    assert "ARG CUDA_IMAGE=nvidia/cuda:" in RUNTIME_IMAGES[1].read_text()
    assert [rest for _, rest in (stage[0] for stage in gpu)] == [
        "${CUDA_IMAGE} AS build",
        "${CUDA_IMAGE}",
    ]
    build_steps = " ".join(rest for _, rest in gpu[0])
    assert ".[runtime-gpu," in build_steps
    assert ".[runtime," in " ".join(rest for _, rest in cpu[0])
    assert _final(RUNTIME_IMAGES[0])["ENTRYPOINT"] == _final(RUNTIME_IMAGES[1])["ENTRYPOINT"]


@pytest.mark.parametrize("dockerfile", RUNTIME_IMAGES, ids=lambda p: p.name)
def test_runtime_image_carries_the_locale_onnxruntime_asks_for(dockerfile: Path) -> None:
    """Slim and CUDA bases have no en_US.UTF-8: StringNormalizer graphs would not load."""
    build = " ".join(rest for instruction, rest in _stages(dockerfile)[0] if instruction == "RUN")
    assert "install --yes --no-install-recommends" in build
    assert re.search(r"install [^&]*\blocales\b", build), "the build stage installs locales"
    language, _, charmap = ONNXRUNTIME_LOCALE.partition(".")
    assert f"localedef --inputfile {language} --charmap {charmap} {ONNXRUNTIME_LOCALE}" in build
    final = _final(dockerfile)
    assert f"--from=build {LOCALE_ARCHIVE} {LOCALE_ARCHIVE}" in final["COPY"]
    assert "locales" not in " ".join(final.get("RUN", [])), "only the archive, not the package"


def test_images_are_tagged_as_the_chart_and_the_operator_expect() -> None:
    """One version (the chart's appVersion, the distribution's) names both images everywhere."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    version = chart["appVersion"]
    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"] == version
    runtime = f"ghcr.io/modelplane/runtime:{version}"
    (deployment,) = [o for o in helm.template() if o["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"ghcr.io/modelplane/operator:{version}"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MODELPLANE_OPERATOR_RUNTIME_IMAGE"] == runtime
    assert OperatorConfig().runtime_image == runtime
    assert OperatorConfig().runtime_gpu_image == f"ghcr.io/modelplane/runtime-gpu:{version}"
    # `make images` tags its archives from the same appVersion, and the Dockerfiles say so.
    script = BUILD_SCRIPT.read_text()
    assert "charts/modelplane/Chart.yaml" in script
    assert "ghcr.io/modelplane/runtime:$VERSION" in script
    assert "ghcr.io/modelplane/operator:$VERSION" in script
    assert f"-t {runtime} " in RUNTIME_IMAGES[0].read_text()
    assert f"-t ghcr.io/modelplane/operator:{version} " in OPERATOR_IMAGE.read_text()


def test_local_base_image_stands_in_for_python_slim() -> None:
    """What the Dockerfiles need of PYTHON_IMAGE, the base `make images` builds provides."""
    for dockerfile in (RUNTIME_IMAGES[0], OPERATOR_IMAGE):
        assert "ARG PYTHON_IMAGE=python:3.11-slim-bookworm" in dockerfile.read_text()
    (include,) = re.findall(r"--include=(\S+)", BUILD_SCRIPT.read_text())
    packages = set(include.split(","))
    # python -m venv, `python` itself, groupadd/useradd, TLS to PyPI; apt comes with --variant=apt.
    assert {"python3", "python3-venv", "python-is-python3", "passwd", "ca-certificates"} <= packages
    assert "--variant=apt" in BUILD_SCRIPT.read_text()
    assert not {"locales", "gcc", "build-essential"} & packages, "the Dockerfiles' job, if anyone's"
    base = _stages(BASE_IMAGE)
    assert [rest for _, rest in (stage[0] for stage in base)] == ["scratch"]
    env = _env(_final(BASE_IMAGE))
    assert env["LANG"] == "C.UTF-8"
    assert "/usr/bin" in env["PATH"].split(":")


def test_operator_image_runs_what_the_chart_runs() -> None:
    final = _final(OPERATOR_IMAGE)
    assert json.loads(final["ENTRYPOINT"][0]) == ["kopf"]
    assert json.loads(final["CMD"][0]) == OPERATOR_ARGS
    (deployment,) = [o for o in helm.template() if o["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == RUNTIME_UID
    assert "command" not in pod["containers"][0], "the chart relies on the image's entrypoint"


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The distribution built from just what the Dockerfiles copy, unpacked as pip would."""
    context = tmp_path_factory.mktemp("context")
    for source in sorted(set(_copied_sources(RUNTIME_IMAGES[0]) + _copied_sources(OPERATOR_IMAGE))):
        target = context / source
        if (REPO / source).is_dir():
            shutil.copytree(
                REPO / source, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
            )
        else:
            shutil.copyfile(REPO / source, target)
    wheels = tmp_path_factory.mktemp("wheels")
    subprocess.run(
        [*PIP_WHEEL, "-w", str(wheels), str(context)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("modelplane-*.whl")
    site = tmp_path_factory.mktemp("site")
    with zipfile.ZipFile(wheel) as unpacked:
        unpacked.extractall(site)
    return site


def _from_wheel(site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        # PYTHONPATH comes before the editable install's finder: the wheel's code runs.
        env={**os.environ, "PYTHONPATH": str(site)},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_wheel_carries_both_packages_and_the_cli(installed_wheel: Path, tmp_path: Path) -> None:
    probe = _from_wheel(
        installed_wheel,
        "-c",
        "import modelplane_operator.handlers, modelplane_runtime.service;"
        "print(modelplane_operator.handlers.__file__);"
        "print(modelplane_runtime.service.__file__)",
        cwd=tmp_path,
    )
    assert probe.returncode == 0, probe.stderr
    assert all(line.startswith(str(installed_wheel)) for line in probe.stdout.split())
    (entry_points,) = installed_wheel.glob("modelplane-*.dist-info/entry_points.txt")
    points = entry_points.read_text()
    assert "modelplane = modelplane_api.cli:main" in points
    assert "render = modelplane_operator.cli:add_commands" in points
    assert "runtime = modelplane_runtime.cli:add_commands" in points


def test_runtime_entrypoint_fetches_and_refuses_from_the_wheel(
    installed_wheel: Path, tmp_path: Path
) -> None:
    model = relu_and_double(tmp_path / "source.onnx")
    target = tmp_path / "models" / "model.onnx"
    fetched = _from_wheel(
        installed_wheel,
        *RUNTIME_COMMAND[1:],
        "fetch",
        model.as_uri(),
        str(target),
        cwd=tmp_path,
    )
    assert fetched.returncode == 0, fetched.stderr
    assert target.read_bytes() == model.read_bytes()
    refused = _from_wheel(
        installed_wheel, *RUNTIME_COMMAND[1:], "serve", "--port", "x", cwd=tmp_path
    )
    assert refused.returncode != 0
    assert refused.stderr.strip().count("\n") == 0, refused.stderr
