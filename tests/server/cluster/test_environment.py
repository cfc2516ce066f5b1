"""``python -m server.cluster``'s local Ray: what its nodes' environment gets (no Ray needed)."""
import os

from server.cluster.__main__ import LEAN_RAY_ENV, node_environment
from server.cluster.options import PROXY_CALLBACK, PROXY_CALLBACK_ENV
from server.settings import REPO_ROOT


def test_a_local_ray_gets_the_proxy_callback_the_checkout_and_lean_bookkeeping_unless_told_otherwise():
    env = node_environment({"PYTHONPATH": "/elsewhere", "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.2"})
    assert env[PROXY_CALLBACK_ENV] == PROXY_CALLBACK
    assert env["PYTHONPATH"] == str(REPO_ROOT) + os.pathsep + "/elsewhere"
    assert env["RAY_SERVE_CONTROL_LOOP_INTERVAL_S"] == "0.2"  # the environment wins
    others = [name for name in LEAN_RAY_ENV if name != "RAY_SERVE_CONTROL_LOOP_INTERVAL_S"]
    assert others and all(env[name] == LEAN_RAY_ENV[name] for name in others)
    assert float(LEAN_RAY_ENV["RAY_SERVE_CONTROL_LOOP_INTERVAL_S"]) <= 1.0  # a dead replica is still replaced soon


def test_without_anything_set_every_lean_setting_applies():
    env = node_environment({})
    assert all(env[name] == value for name, value in LEAN_RAY_ENV.items())
    assert env["PYTHONPATH"] == str(REPO_ROOT)
