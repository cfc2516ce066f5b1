"""Static checks of docker-compose.yml, the Dockerfile and .dockerignore (no Docker needed)."""
import re
from pathlib import Path

import yaml

from server.settings import ENV_PREFIX, Settings

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
    mounts = {m.split(":")[-2] if m.count(":") >= 2 else m.split(":")[1]: m for m in svc["volumes"]}
    assert mounts["/weights/Wan2.2-TI2V-5B"].endswith(":ro") and mounts["/artifacts"].endswith(":ro")
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
    assert "recordings" in compose["volumes"]


def test_dockerfile():
    text = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^ARG BASE_IMAGE=(\S+)", text, re.M).group(1)
    assert "cuda" in base and base.startswith("pytorch/pytorch:")
    assert re.search(r"^FROM \$\{BASE_IMAGE\}", text, re.M)
    assert re.search(r"^ARG FLASH_ATTN=0", text, re.M) and 'if [ "$FLASH_ATTN" = "1" ]' in text
    assert re.search(r"^ARG EXTRAS=serve$", text, re.M) and 'pip install ".[${EXTRAS}]"' in text
    assert "DIFFSYNTH_SKIP_DOWNLOAD=true" in text and "HF_HUB_OFFLINE=1" in text
    assert "EXPOSE 8000" in text and "/readyz" in text and re.search(r"^USER ", text, re.M)
    assert '"--host", "0.0.0.0"' in text
    for folder in ("models", "server", "web"):
        assert f"COPY {folder} ./{folder}" in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "training", "tests"} <= set(ignored)
    assert not {"models", "server", "web", "README.md", "pyproject.toml"} & set(ignored)
