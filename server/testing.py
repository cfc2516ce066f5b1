"""Helpers for tests and benchmarks: run ``python -m server`` in a subprocess on loopback and wait for /readyz."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server_process(*args: str, timeout: float = 90.0, threads: int = 1, log_path=None):
    """Yield the base URL of ``python -m server --host 127.0.0.1 --port <free> *args`` once /readyz says ready;
    the process is terminated afterwards. Its output goes to ``log_path`` (or is discarded)."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", str(port),
               "--threads", str(threads), "--log_level", "warning",
               *([] if "--world" in args else ["--world", "random"]), *args]  # tests fly the fast random preset
    log = open(log_path, "w") if log_path else subprocess.DEVNULL
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                where = f"; see {log_path}" if log_path else ""
                raise RuntimeError(f"server exited with {process.returncode}{where}")
            try:
                with urllib.request.urlopen(base + "/readyz", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"server not ready after {timeout} s")
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if log_path:
            log.close()
