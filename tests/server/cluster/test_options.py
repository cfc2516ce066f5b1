"""server.cluster.options: the replica options parsed and refused by name, and what a replica admits (Serve's
max_ongoing_requests) from --max_sessions and --max_waiting. No Ray needed."""
import pytest

from server.cluster.deployment import pinned
from server.cluster.options import (
    REQUEST_HEADROOM,
    ClusterOptions,
    deployment_options,
    max_ongoing_requests,
    parse_args,
    replica_count,
)
from server.generation.affinity import available_cores
from server.settings import MAX_SESSIONS_CAP, Settings


def test_cpu_replicas_run_one_torch_thread_without_gradio():
    settings, options = parse_args(["--cpu_replicas", "2", "--world", "random", "--max_sessions", "1"], env={})
    assert options == ClusterOptions(cpu_replicas=2) and options.on_cpu
    assert (settings.device, settings.threads, settings.gradio, settings.max_sessions) == ("cpu", 1, False, 1)
    settings, _ = parse_args(["--cpu_replicas", "1", "--threads", "2"], env={})
    assert settings.threads == 2  # given, kept


def test_gpu_replicas_default_to_cuda_and_every_gpu():
    settings, options = parse_args(["--model_dir", "/weights"], env={})
    assert settings.device == "cuda" and options.replicas is None
    assert replica_count(options, gpus=8.0) == 8
    assert replica_count(ClusterOptions(replicas=3), gpus=8.0) == 3
    assert replica_count(ClusterOptions(cpu_replicas=2), gpus=0.0) == 2
    with pytest.raises(ValueError, match="replicas: Ray sees no GPU; pass --cpu_replicas"):
        replica_count(options, gpus=0.0)
    with pytest.raises(ValueError, match="replicas: 4 GPU replicas asked, Ray sees 2 GPUs"):
        replica_count(ClusterOptions(replicas=4), gpus=2.0)


def test_cpu_replicas_pin_their_workers_unless_told_not_to():
    assert parse_args(["--cpu_replicas", "2"], env={})[1].pins
    assert not parse_args(["--cpu_replicas", "2", "--pin_cores", "0"], env={})[1].pins
    assert not parse_args(["--cpu_replicas", "2"], env={"WANFLY_PIN_CORES": "false"})[1].pins
    assert not parse_args(["--model_dir", "/weights"], env={})[1].pins  # GPU replicas: not unless asked
    assert parse_args(["--model_dir", "/weights", "--pin_cores", "1"], env={"WANFLY_PIN_CORES": "0"})[1].pins


def test_each_replica_takes_the_cores_of_its_rank_on_its_node():
    settings = Settings(world="random", threads=2, cpu_cores="4-7")
    assert [pinned(settings, rank).cpu_cores for rank in range(3)] == ["4,5", "6,7", "4,5"]
    assert pinned(Settings(threads=1), 1).cpu_cores == str(available_cores()[1 % len(available_cores())])
    assert pinned(settings, None) is settings  # Serve gave no rank: not pinned (a warning says so)


def test_a_platform_that_cannot_pin_runs_its_replicas_unpinned(monkeypatch):
    monkeypatch.setattr("server.cluster.deployment.can_pin", lambda: False)  # macOS: no sched_setaffinity
    settings = Settings(world="random", threads=1)
    assert pinned(settings, 0) is settings


def test_replica_options_from_the_environment_like_every_server_option():
    _, options = parse_args([], env={"WANFLY_REPLICAS": "3", "WANFLY_ADDRESS": "auto"})
    assert (options.replicas, options.address) == (3, "auto")
    _, options = parse_args(["--replicas", "2"], env={"WANFLY_REPLICAS": "3", "WANFLY_CPU_REPLICAS": ""})
    assert (options.replicas, options.cpu_replicas) == (2, None)  # the command line wins; empty is not set


@pytest.mark.parametrize("argv, env, names", [
    (["--cpu_replicas", "0"], {}, "cpu_replicas must be >= 1, got 0"),
    (["--replicas", "2", "--cpu_replicas", "2"], {}, "replicas and cpu_replicas exclude each other"),
    (["--cpu_replicas", "2", "--gradio", "1"], {}, "gradio: not served by python -m server.cluster"),
    (["--cpu_replicas", "2"], {"WANFLY_GRADIO": "1"}, "gradio: not served"),
    (["--cpu_replicas", "2", "--device", "cuda"], {}, "device: CPU replicas run on cpu"),
    (["--cpu_replicas", "2", "--max_upload_bytes", str(16 * 2**20)], {}, "max_upload_bytes: 16777216 makes"),
    (["--cpu_replicas", "two"], {}, "--cpu_replicas: invalid int value"),
    (["--cpu_replicas", "2", "--pin_cores", "maybe"], {}, "pin_cores: expected 1 or 0, got 'maybe'"),
    (["--cpu_replicas", "2"], {"WANFLY_PIN_CORES": "2"}, "pin_cores: expected 1 or 0, got '2'"),
    ([], {"WANFLY_REPLICAS": "all"}, "WANFLY_REPLICAS: not an integer: 'all'"),
])
def test_bad_options_exit_naming_the_option(argv, env, names, capsys):
    with pytest.raises(SystemExit) as exited:
        parse_args(argv, env=env)
    assert exited.value.code == 2 and names in capsys.readouterr().err


def test_help_lists_server_and_replica_options(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--help"], env={})
    text = capsys.readouterr().out
    assert "python -m server.cluster" in text and "--cpu_replicas" in text and "--max_sessions" in text


def test_a_replica_admits_its_flights_its_waiting_line_and_short_requests():
    assert max_ongoing_requests(Settings(max_sessions=1, max_waiting=0)) == 1 + REQUEST_HEADROOM
    assert max_ongoing_requests(Settings(max_sessions=4, max_waiting=8)) == 12 + REQUEST_HEADROOM
    # no --max_sessions: the most a default admits (a causal replica measures its own, up to the cap)
    assert max_ongoing_requests(Settings(max_waiting=2)) == MAX_SESSIONS_CAP + 2 + REQUEST_HEADROOM
    gpu = deployment_options(Settings(max_sessions=2, max_waiting=1), ClusterOptions(replicas=4), 4)
    assert gpu["num_replicas"] == 4 and gpu["ray_actor_options"] == {"num_cpus": 1, "num_gpus": 1}
    assert gpu["max_ongoing_requests"] == 3 + REQUEST_HEADROOM
    assert gpu["request_router_config"] == {"request_router_class": "server.cluster.routing:FewestRequestsRouter"}
    cpu = deployment_options(Settings(log_level="warning"), ClusterOptions(cpu_replicas=2), 2)
    assert cpu["ray_actor_options"] == {"num_cpus": 1} and cpu["logging_config"] == {"log_level": "WARNING"}
