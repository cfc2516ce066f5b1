"""``python -m server.cluster`` for real: a local Ray with 2 CPU replicas of the random world behind Serve's proxy on
127.0.0.1. Two flights land on different replicas, a third is refused by the protocol, a job and a recording are
downloadable through any replica, and a replica killed mid-flight costs only its own flight. Loopback only, every
loop bounded. Marked ``ray``: skipped where Ray is not installed or cannot start."""
import asyncio
import json
import os
import signal
import time
import urllib.request

import pytest

from server.generation.affinity import available_cores, parse_cores
from server.testing import RayUnavailable, cluster_process

pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install -e '.[cluster]')")
pytestmark = pytest.mark.ray
START = {"type": "start", "prompt": "a drone over hills", "image": None, "seed": 1, "steps": 1}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    log = tmp_path_factory.mktemp("cluster") / "cluster.log"
    try:
        with cluster_process("--max_sessions", "1", "--max_waiting", "0", replicas=2, log_path=log) as url:
            yield url
    except RayUnavailable as unavailable:
        pytest.skip(str(unavailable))


def get(url: str, expect_json: bool = True):
    with urllib.request.urlopen(url, timeout=10) as response:
        body = response.read()
        return (json.loads(body) if expect_json else body), response.headers.get("x-wanfly-replica")


def post(url: str, body: dict):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.loads(response.read()), response.headers.get("x-wanfly-replica")


def from_another_replica(url: str, not_from: str, tries: int = 40) -> bytes:
    """GET ``url`` until a replica other than ``not_from`` answers (the router breaks ties at random)."""
    for _ in range(tries):
        body, replica = get(url, expect_json=False)
        if replica != not_from:
            return body
    raise AssertionError(f"{tries} requests, all answered by replica {not_from}")


def pinned_threads(pid: int) -> set[str]:
    """The cores of a process's threads that may not run on every core (its generation worker's)."""
    cores = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/status") as status:
            allowed = next(line.split()[1] for line in status if line.startswith("Cpus_allowed_list"))
        if parse_cores(allowed) != available_cores():
            cores.add(allowed)
    return cores


async def start(base: str):
    from websockets.asyncio.client import connect
    ws = await connect(base.replace("http://", "ws://") + "/ws", compression=None, max_size=2**24)
    await ws.send(json.dumps(START))
    return ws, json.loads(await ws.recv())


async def frames_within(ws, seconds: float, until=None) -> tuple[int, list]:
    """Binary frames and JSON messages received within ``seconds``, until the socket closes or a message of type
    ``until`` arrives, or (a callable) until it says stop."""
    from websockets.exceptions import ConnectionClosed
    frames, messages, end = 0, [], time.monotonic() + seconds
    done = until if callable(until) else (lambda: bool(messages) and messages[-1]["type"] == until)
    while (left := end - time.monotonic()) > 0 and not (until and done()):
        try:
            message = await asyncio.wait_for(ws.recv(), left)
        except asyncio.TimeoutError:
            break
        except ConnectionClosed:
            break
        if isinstance(message, bytes):
            frames += 1
        else:
            messages.append(json.loads(message))
    return frames, messages


def test_a_job_and_a_recording_download_through_any_replica(base):
    status, job, creator = post(base + "/generate", {"prompt": "hills", "num_frames": 9, "steps": 1})
    assert status == 202 and creator
    deadline = time.monotonic() + 60
    while (view := get(f"{base}/jobs/{job['id']}")[0])["status"] != "done":
        assert view["status"] in ("queued", "running") and time.monotonic() < deadline, view
        time.sleep(0.3)
    video = from_another_replica(f"{base}/jobs/{job['id']}/video", not_from=creator)
    assert video[4:8] == b"ftyp" and len(video) > 1000

    async def flight():
        ws, ready = await start(base)
        await frames_within(ws, 1.5)
        await ws.send(json.dumps({"type": "stop"}))
        _, messages = await frames_within(ws, 20, until="recording")
        await ws.close()
        return ready, next(m for m in messages if m["type"] == "recording")
    ready, recording = asyncio.run(flight())
    assert ready["replica"] and recording["frames"] >= 9
    mp4 = from_another_replica(base + recording["video"], not_from=ready["replica"])
    actions = json.loads(from_another_replica(base + recording["actions"], not_from=ready["replica"]))
    assert mp4[4:8] == b"ftyp" and actions["frames"] == recording["frames"]


def test_flights_spread_over_replicas_and_a_killed_replica_costs_only_its_flight(base):
    async def scenario():
        a, ready_a = await start(base)
        b, ready_b = await start(base)
        assert ready_a["type"] == ready_b["type"] == "ready"
        assert {ready_a["replica"], ready_b["replica"]} == set(r["replica"] for r in
                                                               get(base + "/readyz")[0]["cluster"]["replicas"])
        c, refused = await start(base)  # both replicas hold max_sessions 1 flight, no waiting line
        assert refused["type"] == "error" and refused["code"] == "busy"
        await frames_within(c, 5)
        assert c.close_code == 1013
        (frames_a, _), (frames_b, _) = await asyncio.gather(frames_within(a, 2), frames_within(b, 2))
        assert frames_a > 0 and frames_b > 0
        metrics = get(base + "/metrics", expect_json=False)[0].decode()
        assert "wanfly_cluster_sessions_active 2" in metrics
        for replica in (ready_a["replica"], ready_b["replica"]):
            assert f'wanfly_sessions_active{{replica="{replica}"}} 1' in metrics

        pids = {r["replica"]: r["pid"] for r in get(base + "/readyz")[0]["cluster"]["replicas"]}
        if len(available_cores()) >= 2:  # each replica's worker on its own core (--pin_cores, on for CPU replicas)
            cores = [pinned_threads(pid) for pid in pids.values()]
            assert all(len(c) == 1 for c in cores) and sorted(c.pop() for c in cores) == ["0", "1"]
        os.kill(pids[ready_a["replica"]], signal.SIGKILL)
        told = asyncio.ensure_future(frames_within(a, 10))
        frames_b, _ = await frames_within(b, 10, until=told.done)
        _, told_a = await told
        assert told_a[-1] == {"type": "error", "code": "generation_failed", "message": told_a[-1]["message"]}
        assert "replica" in told_a[-1]["message"] and a.close_code == 1011
        deadline = time.monotonic() + 30  # polled at once: the replacement may serve within seconds on a quiet machine

        def replacing(cluster):  # degraded, and Serve is bringing a replica back
            return cluster["degraded"] and set(cluster["replica_states"] or {}) - {"RUNNING"}
        while not replacing(cluster := get(base + "/readyz")[0]["cluster"]):
            assert time.monotonic() < deadline, cluster
            time.sleep(0.2)
        assert cluster["replicas_serving"] == 1 and cluster["replicas_target"] == 2
        more_b, _ = await frames_within(b, 3)
        assert more_b > 0  # the other flight goes on after the kill
        await b.close()
    asyncio.run(scenario())
