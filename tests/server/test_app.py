"""server.app: config, health, metrics and docs routes, the request body limit, compiling before the warm-up.
(Tokens and Origin are checked on a real server in test_main.py.)"""
import pytest

import server.app as app_module
from models.action_format import ACTION_NAMES
from models.pipeline import WanActionPipeline
from server.bindings import KEYBOARD, check_bindings
from server.generation.streams import StreamCost


def test_config_health_and_docs(make_client):
    client = make_client()
    assert client.get("/healthz").json() == {"ok": True}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["world"]["random_weights"] is True
    config = client.get("/api/config").json()
    assert config["actions"] == list(ACTION_NAMES)
    assert (config["fps"], config["chunk_frames"]) == (16, 9)
    keys = {k["code"]: k["action"] for k in config["bindings"]["keyboard"]}
    assert keys == KEYBOARD and keys["KeyW"] == "Forward" and keys["ArrowLeft"] == "Yaw Left"
    assert config["bindings"]["gamepad"]["dead_zone"] == pytest.approx(0.12)
    assert config["samples"] and config["token_required"] is False
    assert config["limits"]["max_message_bytes"] == 16384
    check_bindings()
    assert client.get("/openapi.json").json()["paths"]["/generate"]["post"]
    page = client.get("/")
    assert page.status_code == 200 and "player" in page.text
    assert client.get(f"/samples/{config['samples'][0]}.png").headers["content-type"] == "image/png"
    metrics = client.get("/metrics").text
    for name in ("wanfly_sessions_active", "wanfly_sessions_queued", "wanfly_chunk_seconds_count",
                 "wanfly_frames_sent_total", "wanfly_frames_dropped_total", "wanfly_stalls_total",
                 "wanfly_errors_total"):
        assert name in metrics


def test_the_app_factory_takes_its_settings_from_the_environment(monkeypatch):
    """``python -m server`` names ``app_from_env`` to uvicorn (factory mode) and hands the settings over as WANFLY_*
    variables; nothing loads until the lifespan runs."""
    monkeypatch.setenv("WANFLY_MAX_JOBS", "3")
    monkeypatch.setenv("WANFLY_GRADIO", "0")
    monkeypatch.setenv("WANFLY_ALLOWED_HOSTS", "a.example,b.example")
    settings = app_module.app_from_env().state.wanfly.settings
    assert (settings.max_jobs, settings.gradio, settings.allowed_hosts) == (3, False, ["a.example", "b.example"])


def test_request_body_limit_413(make_client):
    client = make_client(max_upload_bytes=1000)
    body = {"prompt": "hills", "image": "data:image/png;base64," + "A" * 200_000}
    response = client.post("/generate", json=body)
    assert response.status_code == 413 and "limit" in response.json()["detail"]


def test_compile_setting_compiles_before_the_warm_up(make_client, monkeypatch):
    """--compile: the app compiles the world when it attaches it, before the warm-up generation (so the warm-up,
    not a user's chunk, pays the compilation). Compilation itself is stubbed: it takes ~100 s on CPU."""
    order = []
    monkeypatch.setattr(WanActionPipeline, "compile_for_inference", lambda pipe: order.append("compile"))
    real_warm_up = app_module.warm_up
    monkeypatch.setattr(app_module, "warm_up", lambda generator: order.append("warm_up") or real_warm_up(generator))
    client = make_client(world_overrides={"warm": False}, compile=True)
    assert client.get("/readyz").status_code == 200
    assert order == ["compile", "warm_up"]


def test_max_sessions_default_chunked_4_causal_from_one_measured_stream(make_client, monkeypatch, caplog):
    assert make_client().get("/api/config").json()["limits"]["max_sessions"] == 4
    assert make_client().get("/api/config").json()["limits"]["stream_bytes"] is None
    cost = StreamCost(bytes=300 * 2**20, source="test", block_s=0.05)
    monkeypatch.setattr(app_module, "measure_stream", lambda generator: cost)
    monkeypatch.setattr(app_module, "free_memory", lambda device: 2**30)  # 1 GiB: half of it holds 1 stream
    causal = {"generation": "causal", "chunk_frames": 5}
    with caplog.at_level("INFO", logger="wanfly.app"):
        limits = make_client(world_overrides=causal).get("/api/config").json()["limits"]
    assert (limits["max_sessions"], limits["stream_bytes"]) == (1, 300 * 2**20)
    assert any("max_sessions 1 (one stream 300.0 MiB" in r.getMessage() for r in caplog.records)
    monkeypatch.setattr(app_module, "free_memory", lambda device: 64 * 2**30)
    assert make_client(world_overrides=causal).get("/api/config").json()["limits"]["max_sessions"] == 5  # 250/50 ms
    assert make_client(world_overrides=causal, max_sessions=7).get("/api/config").json()["limits"]["max_sessions"] == 7
