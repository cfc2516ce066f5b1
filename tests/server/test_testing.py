"""server.testing: a command that started a server with ``server_process`` stops it when it gets SIGTERM."""
import os
import signal
import subprocess
import sys
import time

import pytest

from server.settings import REPO_ROOT

COMMAND = """
import os, sys, time
from server.testing import server_process, stop_servers_on_sigterm
if sys.argv[1] == "1":
    stop_servers_on_sigterm()
with server_process():
    def parent(pid):
        try:
            with open(f"/proc/{pid}/stat") as stat:
                return int(stat.read().split(")")[-1].split()[1])
        except FileNotFoundError:
            return None
    print(next(pid for pid in os.listdir("/proc") if pid.isdigit() and parent(pid) == os.getpid()), flush=True)
    time.sleep(120)
"""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("handled", [True, False])
def test_sigterm_stops_the_server_a_command_started(handled):
    command = subprocess.Popen([sys.executable, "-c", COMMAND, "1" if handled else "0"], cwd=REPO_ROOT,
                               stdout=subprocess.PIPE, text=True)
    server = int(command.stdout.readline())
    try:
        command.send_signal(signal.SIGTERM)
        command.wait(timeout=30)
        deadline = time.monotonic() + (15 if handled else 3)  # stopping takes a second or two
        while alive(server) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert alive(server) is not handled  # without the handler the server lives on: the bug this guards
    finally:
        if alive(server):
            os.kill(server, signal.SIGKILL)
