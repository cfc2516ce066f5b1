"""Helpers for tests and benchmarks: run ``python -m server`` (or ``python -m server.cluster``) in a subprocess on
loopback and wait for /readyz."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Callable, Optional

from server.cluster.options import RAY_UNAVAILABLE


class RayUnavailable(RuntimeError):
    """``python -m server.cluster`` could not start Ray on this machine (tests skip)."""


def stop_servers_on_sigterm() -> None:
    """From a command's ``main``: SIGTERM (``timeout``, ``kill``) ends this process through its ``finally`` blocks, so
    the servers it runs with ``server_process`` / ``cluster_process`` stop with it. Python's default would end it at
    once and leave them running: an orphaned cluster kept taking CPU from the benchmark runs after it."""
    if threading.current_thread() is threading.main_thread():  # the only thread Python lets handle signals
        signal.signal(signal.SIGTERM, _exit_on_sigterm)


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server_process(*args: str, timeout: float = 90.0, threads: int = 1, log_path=None, python_options=()):
    """Yield the base URL of ``python [python_options] -m server --host 127.0.0.1 --port <free> *args`` once /readyz
    says ready; the process is terminated afterwards. Its output goes to ``log_path`` (or is discarded)."""
    with _process("server", args, timeout, threads, log_path, ready=None, python_options=python_options) as base:
        yield base


@contextlib.contextmanager
def cluster_process(*args: str, replicas: int = 2, timeout: float = 180.0, threads: int = 1, log_path=None):
    """``python -m server.cluster --cpu_replicas <replicas> ...`` on loopback, yielded once /readyz says all
    ``replicas`` serve; SIGTERM afterwards (Serve and its local Ray shut down), SIGKILL to its process group if that
    hangs. ``RayUnavailable`` when Ray cannot start here."""
    args = ("--cpu_replicas", str(replicas), *args)
    with _process("server.cluster", args, timeout, threads, log_path,
                  ready=lambda body: body.get("cluster", {}).get("replicas_serving") == replicas) as base:
        yield base


@contextlib.contextmanager
def _process(module: str, args, timeout: float, threads: int, log_path, ready: Optional[Callable[[dict], bool]],
             python_options=()):
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, *python_options, "-m", module, "--host", "127.0.0.1", "--port", str(port),
               "--threads", str(threads), "--log_level", "warning",
               *([] if "--world" in args else ["--world", "random"]), *args]  # tests fly the fast random preset
    log = open(log_path, "w") if log_path else subprocess.DEVNULL
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=module != "server")  # a cluster's Ray processes share its group
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(process, base, timeout, log_path, ready)
        yield base
    finally:
        _stop(process, group=module != "server")
        if log_path:
            log.close()


def _wait_ready(process, base: str, timeout: float, log_path, ready) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            where = f"; see {log_path}" if log_path else ""
            if process.returncode == RAY_UNAVAILABLE:
                raise RayUnavailable(f"Ray cannot start here{where}")
            raise RuntimeError(f"server exited with {process.returncode}{where}")
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=5) as response:
                if response.status == 200 and (ready is None or ready(json.loads(response.read()))):
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"server not ready after {timeout} s")
        time.sleep(0.2 if ready is None else 1.0)


def _stop(process, group: bool) -> None:
    process.terminate()
    try:
        process.wait(timeout=45 if group else 15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if group:  # whatever of the cluster is left (its group is the process's own session)
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
