"""The Docker files without Docker: compose and the Dockerfile checked statically, the entrypoint run with bash,
the one constraints file against this environment, and (slow, WANFLY_SLOW=1) the image's install steps in a clean
virtualenv."""
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from scripts.deps import requirements
from server.settings import ENV_PREFIX, PRESETS, Settings

ROOT = Path(__file__).resolve().parents[2]


def service():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    svc = compose["services"]["wanfly"]  # the default (the cluster variant: tests/server/cluster/test_deploy.py)
    assert "profiles" not in svc
    return compose, svc


def environment(svc) -> dict:
    env = svc["environment"]
    return env if isinstance(env, dict) else dict(item.split("=", 1) for item in env)


def test_compose_gpu_weights_health_offline():
    compose, svc = service()
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    mounts = {re.sub(r"\$\{[^}]*\}", "X", m).split(":")[1]: m for m in svc["volumes"]}  # target -> mount
    assert mounts["/weights/Wan2.2-TI2V-5B"].endswith(":ro") and mounts["/artifacts"].endswith(":ro")
    assert mounts["/recordings"] == "${RECORDINGS_DIR:-recordings}:/recordings" and "recordings" in compose["volumes"]
    env = environment(svc)
    assert env["WANFLY_MODEL_DIR"] == "/weights/Wan2.2-TI2V-5B" and env["WANFLY_ARTIFACTS"] == "/artifacts"
    assert env["DIFFSYNTH_SKIP_DOWNLOAD"] == "true" and env["HF_HUB_OFFLINE"] == "1"
    settings_fields = set(Settings.__dataclass_fields__)
    for key in env:
        if key.startswith(ENV_PREFIX):
            assert key[len(ENV_PREFIX):].lower() in settings_fields, key
    health = " ".join(svc["healthcheck"]["test"])
    assert "/readyz" in health and "8000" in health
    assert svc["ports"] == ["${WANFLY_PORT:-8000}:8000"]


def test_compose_serves_in_real_time_as_the_host_user_and_does_not_loop():
    """The GPU defaults of python -m server are 10 steps with CFG 5: compose picks the real-time preset and compiles,
    each a documented knob; it runs as WANFLY_UID:WANFLY_GID (recordings on a host folder are the user's) and a
    start-up error does not restart forever."""
    compose, svc = service()
    env = environment(svc)
    assert env["WANFLY_PRESET"] == "${WANFLY_PRESET:-realtime}" and env["WANFLY_COMPILE"] == "${WANFLY_COMPILE:-1}"
    assert "realtime" in PRESETS
    header = (ROOT / "docker-compose.yml").read_text().split("services:")[0]
    for knob in ("WANFLY_PRESET", "WANFLY_COMPILE", "WANFLY_UID", "RECORDINGS_DIR", "WAN_MODEL_DIR"):
        assert knob in header, knob
    assert svc["user"] == "${WANFLY_UID:-1000}:${WANFLY_GID:-1000}"
    assert svc["build"]["args"]["UID"] == "${WANFLY_UID:-1000}" and svc["build"]["args"]["GID"] == "${WANFLY_GID:-1000}"
    assert svc["restart"] == "on-failure:3"


def constraints() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    return dict(line.split("==") for line in lines if line and not line.startswith("#"))


def test_one_constraints_file_pins_the_tested_versions_for_ci_setup_and_the_image():
    pins = constraints()
    assert (pins["torch"], pins["torchvision"], pins["diffsynth"]) == ("2.14.1", "0.29.1", "2.1.12")
    for requirement in requirements(["dev"]):  # every direct dependency is pinned
        name = re.match(r"[A-Za-z0-9._-]+", requirement).group(0).lower()
        assert name == "wanfly" or name in pins, name
    for name, version in pins.items():  # pinned here = installed here (the suite runs against these)
        assert metadata.version(name).split("+")[0] == version, name
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "-c constraints.txt torch torchvision" in setup and '-c constraints.txt -e ".[$extra]"' in setup
    assert "bash scripts/setup.sh dev" in (ROOT / ".ci" / "run").read_text()
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install -c constraints.txt -r /tmp/requirements.txt" in dockerfile
    base = re.search(r"^ARG BASE_IMAGE=pytorch/pytorch:(\S+)-cuda", dockerfile, re.M).group(1)
    assert base == pins["torch"]  # the image's torch is the tested one, so pip keeps it


def test_dockerfile_installs_dependencies_before_the_code_on_a_runtime_image():
    text = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^ARG BASE_IMAGE=(\S+)", text, re.M).group(1)
    assert base.startswith("pytorch/pytorch:") and "cuda" in base and base.endswith("-runtime")
    assert re.search(r"^FROM \$\{BASE_IMAGE\}", text, re.M)
    assert re.search(r"^ARG FLASH_ATTN=0", text, re.M) and 'if [ "$FLASH_ATTN" = "1" ]' in text
    assert "command -v nvcc" in text and "-devel" in text  # flash-attn builds only on a -devel base
    assert "FlashAttention 3" in text and "flash_attn_interface" in text  # which attention package, said
    lines = [line for line in text.splitlines() if line.startswith(("COPY", "RUN", "ENTRYPOINT"))]
    deps = next(i for i, line in enumerate(lines) if "scripts/deps.py requirements ${EXTRAS}" in line)
    assert re.search(r"^ARG EXTRAS=serve$", text, re.M)  # the default image: the serve extra (cluster: + Ray)
    first_code = next(i for i, line in enumerate(lines) if line.startswith("COPY models"))
    assert all(not line.startswith("COPY") or any(f in line for f in ("pyproject.toml", "scripts/deps.py"))
               for line in lines[:deps]), lines  # only the metadata comes before the dependency layer
    assert deps < first_code
    assert "pip install --no-deps -c constraints.txt ." in text
    for folder in ("models", "server", "web", "worlds"):
        assert f"COPY {folder} ./{folder}" in text
    assert "DIFFSYNTH_SKIP_DOWNLOAD=true" in text and "HF_HUB_OFFLINE=1" in text
    assert "EXPOSE 8000" in text and "/readyz" in text and re.search(r"^USER \$\{UID\}:\$\{GID\}", text, re.M)
    assert 'getent passwd "$UID" >/dev/null || useradd' in text  # an existing uid 1000 is reused, not an error
    assert re.search(r"^ENTRYPOINT \[\"wanfly-entrypoint\"\]", text, re.M)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "training", "tests", "recordings"} <= set(ignored)
    assert not {"models", "server", "web", "worlds", "scripts", "docker", "README.md", "pyproject.toml",
                "constraints.txt"} & set(ignored)


def test_requirements_come_from_the_project_metadata():
    serve = requirements(["serve"])
    assert serve[0].startswith("diffsynth==") and "fastapi-offline" in serve and "gradio" in serve
    assert not any(r.startswith("wanfly") for r in requirements(["dev"])) and "pytest>=8" in requirements(["dev"])
    printed = subprocess.run([sys.executable, str(ROOT / "scripts" / "deps.py"), "requirements", "serve"],
                             capture_output=True, text=True, check=True).stdout.split()
    assert printed == [r.replace(" ", "") for r in serve]


def run_entrypoint(tmp_path, env: dict, *args: str):
    """docker/entrypoint.sh with a stand-in ``python`` that prints the command line and the WANFLY_* variables it
    would start the server with."""
    stub = tmp_path / "bin"
    stub.mkdir(exist_ok=True)
    (stub / "python").write_text('#!/bin/sh\necho "ARGS $*"\nenv | grep ^WANFLY_ | sort\n')
    (stub / "python").chmod(0o755)
    result = subprocess.run(["bash", str(ROOT / "docker" / "entrypoint.sh"), *args], capture_output=True, text=True,
                            env={"PATH": f"{stub}:/usr/bin:/bin", **env}, timeout=30)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    served = dict(line.split("=", 1) for line in lines[1:])
    return lines[0], served, result.stderr


@pytest.mark.parametrize("weights", ["missing", "empty"])
def test_entrypoint_serves_the_toy_world_without_weights(tmp_path, weights):
    """Compose always sets WANFLY_MODEL_DIR and Docker creates a missing bind-mount folder empty: the toy world is
    served (said in one line) instead of a start-up error and a restart loop."""
    model_dir = tmp_path / "weights"
    if weights == "empty":
        model_dir.mkdir()
    args, served, said = run_entrypoint(tmp_path, {
        "WANFLY_MODEL_DIR": str(model_dir), "WANFLY_ARTIFACTS": str(tmp_path), "WANFLY_PRESET": "realtime",
        "WANFLY_COMPILE": "1", "WANFLY_TOKEN": "", "WANFLY_MAX_SESSIONS": "4",
        "WANFLY_RECORDINGS_DIR": str(tmp_path / "rec")}, "--log_level", "debug")
    assert args == "ARGS -m server --host 0.0.0.0 --port 8000 --log_level debug"
    assert served == {"WANFLY_MAX_SESSIONS": "4", "WANFLY_RECORDINGS_DIR": str(tmp_path / "rec")}  # token: unset
    assert said.startswith(f"wanfly-entrypoint: no weights in {model_dir}: serving the TOY world") and \
        said.count("\n") == 1
    assert (tmp_path / "rec").is_dir() and not list((tmp_path / "rec").iterdir())


def test_entrypoint_with_weights_but_no_controller_serves_the_base_model_with_a_banner(tmp_path):
    model_dir, artifacts = tmp_path / "weights", tmp_path / "artifacts"
    model_dir.mkdir()
    (model_dir / "Wan2.2_VAE.pth").write_bytes(b"x")
    artifacts.mkdir()
    env = {"WANFLY_MODEL_DIR": str(model_dir), "WANFLY_ARTIFACTS": str(artifacts), "WANFLY_PRESET": "realtime"}
    _, served, said = run_entrypoint(tmp_path, env)
    assert served == {"WANFLY_MODEL_DIR": str(model_dir), "WANFLY_PRESET": "realtime"}
    assert said.startswith(f"wanfly-entrypoint: no trained controller in {artifacts} (no action_train_config.json)")
    assert "WITHOUT action control" in said
    (artifacts / "action_train_config.json").write_text("{}")
    _, served, said = run_entrypoint(tmp_path, env)  # a controller: everything as given, nothing said
    assert served == env and said == ""


def test_entrypoint_records_elsewhere_when_the_recordings_folder_is_not_writable(tmp_path):
    _, served, said = run_entrypoint(tmp_path, {"WANFLY_RECORDINGS_DIR": "/proc/wanfly-recordings"})
    assert served == {} and "recordings: /proc/wanfly-recordings is not a folder uid" in said
    assert "recording into a temporary folder" in said


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("WANFLY_SLOW") != "1", reason="minutes and the package index: WANFLY_SLOW=1")
def test_the_images_install_steps_in_a_clean_venv(tmp_path):
    """The Dockerfile's two install steps, run in a fresh virtualenv whose only preinstalled packages are torch and
    torchvision (as the CUDA base image's, borrowed from this environment): dependencies from the metadata with the
    constraints, then the code without dependencies; the result serves --help and imports the app."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    base = tmp_path / "base-image"  # torch, torchvision and what they import, as the base image has them
    base.mkdir()
    patterns = ("torch", "torch-*", "torchvision", "torchvision-*", "torchvision.libs", "functorch", "torchgen",
                "nvidia", "nvidia_*", "triton", "triton-*", "cuda", "cuda_*")  # torch's CUDA build comes with the image
    borrowed = {path for pattern in patterns for path in Path(torch_site()).glob(pattern)}
    for path in borrowed:
        (base / path.name).symlink_to(path)
    (Path(site) / "base-image.pth").write_text(str(base) + "\n")
    work = tmp_path / "app"
    work.mkdir()
    for name in ("pyproject.toml", "constraints.txt"):
        (work / name).write_text((ROOT / name).read_text())
    (work / "scripts").mkdir()
    (work / "scripts" / "deps.py").write_text((ROOT / "scripts" / "deps.py").read_text())
    step = "python scripts/deps.py requirements serve > /tmp/requirements.txt && " \
        "pip install -c constraints.txt -r /tmp/requirements.txt"
    requirements_file = tmp_path / "requirements.txt"
    env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}", "PIP_NO_CACHE_DIR": "1"}
    subprocess.run(["bash", "-c", step.replace("/tmp/requirements.txt", str(requirements_file))], cwd=work, env=env,
                   check=True, timeout=1800)
    for folder in ("models", "server", "web", "worlds"):
        shutil.copytree(ROOT / folder, work / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (work / "README.md").write_text((ROOT / "README.md").read_text())
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "-c", "constraints.txt", "."], cwd=work,
                   env=env, check=True, timeout=600)
    checked = subprocess.run(["bash", "-c", "cd / && python -m pip check && python -m server --help | head -1 && "
                              "python -c 'import server.app, diffsynth; print(server.app.__file__)'"],
                             env=env, capture_output=True, text=True, timeout=600)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "usage: python -m server [--option VALUE ...]" in checked.stdout and str(venv) in checked.stdout


def torch_site() -> str:
    import torch

    return str(Path(torch.__file__).parents[1])
