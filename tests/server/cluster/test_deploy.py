"""Static checks of the cluster's deployment files (no Ray, Docker or Kubernetes needed): the Serve config, the
KubeRay RayService (never run here) and the compose service name what exists, with options the app accepts."""
import re
from pathlib import Path

import pytest
import yaml

from server.cluster.deployment import app_builder
from server.cluster.options import PROXY_CALLBACK, PROXY_CALLBACK_ENV, REQUEST_HEADROOM
from server.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[3]
REPLICA_OPTIONS = {"replicas", "cpu_replicas", "address", "pin_cores"}


def pinned_ray() -> str:
    return re.search(r'"ray\[serve\]==([0-9.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)


def check_application(config: dict) -> dict:
    (app,) = config["applications"]
    assert (app["name"], app["route_prefix"]) == ("wanfly", "/")
    assert app["import_path"] == "server.cluster.deployment:app_builder"
    unknown = set(app["args"]) - set(Settings.__dataclass_fields__) - REPLICA_OPTIONS
    assert not unknown, unknown
    assert config["http_options"]["port"] == 8000 and config["http_options"]["host"] == "0.0.0.0"
    return app["args"]


def test_serve_config_runs_the_app_builder_with_server_options():
    check_application(yaml.safe_load((ROOT / "deploy/serve.yaml").read_text()))
    text = (ROOT / "deploy/serve.yaml").read_text()
    assert f"{PROXY_CALLBACK_ENV}={PROXY_CALLBACK} serve run deploy/serve.yaml" in text


def test_app_builder_refuses_unknown_args_by_name():
    with pytest.raises(ValueError, match="wrold: not a python -m server option"):
        app_builder({"wrold": "toy", "replicas": 2})
    with pytest.raises(ValueError, match="replicas and cpu_replicas exclude each other"):
        app_builder({"replicas": 2, "cpu_replicas": 2})


def test_app_builder_takes_serve_run_text_args():
    pytest.importorskip("ray.serve", reason="Ray Serve is not installed")
    app = app_builder({"cpu_replicas": "2", "world": "random", "max_sessions": "1", "max_waiting": "0"})
    flights = app._bound_deployment  # what `serve run` deploys: the Flights deployment bound to its settings
    settings, _, target, pin_cores = flights.init_args
    assert (settings.max_sessions, settings.max_waiting, settings.device, settings.gradio) == (1, 0, "cpu", False)
    assert target == 2 and flights._deployment_config.num_replicas == 2
    assert pin_cores is True  # CPU replicas: each worker on its own core unless told not to
    app = app_builder({"cpu_replicas": "2", "world": "random", "pin_cores": "0"})
    assert app._bound_deployment.init_args[3] is False
    assert flights._deployment_config.max_ongoing_requests == 1 + 0 + REQUEST_HEADROOM
    with pytest.raises(ValueError, match="max_sessions: .*invalid literal"):
        app_builder({"cpu_replicas": 1, "max_sessions": "many"})


def test_rayservice_manifest():
    service = yaml.safe_load((ROOT / "deploy/rayservice.yaml").read_text())
    assert (service["apiVersion"], service["kind"]) == ("ray.io/v1", "RayService")
    args = check_application(yaml.safe_load(service["spec"]["serveConfigV2"]))
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == pinned_ray()
    (workers,) = cluster["workerGroupSpecs"]
    (worker,) = workers["template"]["spec"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1 and workers["replicas"] == args["replicas"]
    (head,) = cluster["headGroupSpec"]["template"]["spec"]["containers"]
    for container in (head, worker):
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env[PROXY_CALLBACK_ENV] == PROXY_CALLBACK
    mounts = {m["mountPath"]: m for m in worker["volumeMounts"]}
    assert mounts[args["model_dir"]]["readOnly"] and mounts[args["artifacts"]]["readOnly"]


def test_compose_cluster_variant_uses_every_gpu():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    svc = compose["services"]["wanfly-cluster"]
    assert svc["profiles"] == ["cluster"] and svc["build"]["args"]["EXTRAS"].split() == ["serve", "cluster"]
    assert svc["entrypoint"][:3] == ["python", "-m", "server.cluster"] and svc["command"] == []
    assert svc["deploy"]["resources"]["reservations"]["devices"] == [{"driver": "nvidia", "count": "all",
                                                                      "capabilities": ["gpu"]}]
    env = svc["environment"]
    names = set(Settings.__dataclass_fields__) | REPLICA_OPTIONS
    assert all(key[len(ENV_PREFIX):].lower() in names for key in env if key.startswith(ENV_PREFIX))
    assert svc["shm_size"] and "/readyz" in " ".join(svc["healthcheck"]["test"])
    assert svc["ports"] == compose["services"]["wanfly"]["ports"]
