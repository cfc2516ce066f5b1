"""server.api: REST jobs to a decodable mp4, 422 naming the field, 429 when the queue is full."""
import time

import imageio_ffmpeg
import numpy as np
import pytest

from models.options import CausalSettings
from server.media.recording import FileStore, FlightRecorder


def forward(steps):
    return [[[1, 0, 0, 0, 0, 0, 0, 0], [0.01, 0, 0, 0, 0, 0, 0, 0]]] * steps


def wait_done(client, job_id, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(f"/jobs/{job_id}").json()
        if status["status"] in ("done", "failed"):
            return status
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} not done in {timeout} s")


def test_job_flow_to_mp4(make_client, tmp_path, png_url):
    client = make_client()
    response = client.post("/generate", json={"prompt": "a drone over hills", "image": png_url,
                                              "actions": forward(4), "num_frames": 17, "steps": 1, "seed": 2})
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/jobs/{job['id']}" and job["status"] in ("queued", "running")
    status = wait_done(client, job["id"])
    assert status["status"] == "done" and status["progress"] == 1.0 and status["frames"] == 17
    video = client.get(status["video_url"])
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    path = tmp_path / "job.mp4"
    path.write_bytes(video.content)
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    frames = [np.frombuffer(frame, np.uint8) for frame in reader]
    assert meta["size"] == (64, 64) and len(frames) == 17 and frames[0].size == 64 * 64 * 3
    assert client.get("/jobs/nope").status_code == 404


@pytest.mark.parametrize("body, field", [
    ({"num_frames": 10}, "num_frames"),
    ({"num_frames": 85}, "num_frames"),
    ({"num_frames": 9, "actions": forward(3)}, "actions"),
    ({"num_frames": 9, "actions": [[[1, 0], [0, 0]]] * 2}, "actions"),
    ({"num_frames": 9, "actions": [[[3] * 8, [0] * 8]] * 2}, "actions"),
    ({"num_frames": 9, "actions": [[[1] + [0] * 7, [-1] + [0] * 7]] * 2}, "actions"),
    ({"steps": 0}, "steps"),
    ({"steps": 51}, "steps"),
    ({"cfg": 0.5}, "cfg"),
    ({"seed": -1}, "seed"),
    ({"image": "data:image/png;base64,AAAA"}, "image"),
    ({"image": "data:text/html;base64,AAAA"}, "image"),
    ({"sample": "missing"}, "sample"),
    ({"prompt": 3}, "prompt"),
    ({"prompt": "x" * 2001}, "prompt"),
    ({"colour": "red"}, "colour"),
    ({"num_frames": 9, "actions": "forward:3"}, "actions"),
    ({"num_frames": 9, "actions": "forwards:2"}, "actions"),
    ({"num_frames": 9, "actions": "forward=1.5:2"}, "actions"),
    ({"num_frames": "9"}, "num_frames"),  # strict types: no coercion, for every field
    ({"num_frames": 9.0}, "num_frames"),
    ({"steps": True}, "steps"),
    ({"seed": "1"}, "seed"),
    ({"cfg": "2"}, "cfg"),
    ({"image": 5}, "image"),
    ('{"prompt": "\\ud800"}', "prompt"),  # a lone surrogate: no encoder takes it
])
def test_validation_422_names_the_field(make_client, body, field):
    client = make_client()
    if isinstance(body, str):
        response = client.post("/generate", content=body, headers={"content-type": "application/json"})
    else:
        response = client.post("/generate", json={"prompt": "hills", **body})
    assert response.status_code == 422, response.text
    assert any(field in detail["loc"] for detail in response.json()["detail"]), response.json()


def test_queue_full_429_and_video_not_ready_409(make_client):
    client = make_client(max_jobs=1)
    long_job = {"prompt": "hills", "num_frames": 81, "steps": 2}
    first = client.post("/generate", json=long_job)
    time.sleep(0.05)  # the worker takes the first job off the queue
    second = client.post("/generate", json={"prompt": "hills"})
    third = client.post("/generate", json={"prompt": "hills"})
    assert (first.status_code, second.status_code, third.status_code) == (202, 202, 429)
    assert third.headers["retry-after"]
    assert client.get(f"/jobs/{second.json()['id']}/video").status_code == 409
    assert wait_done(client, second.json()["id"])["status"] == "done"


def test_a_causal_world_makes_jobs_of_any_length_through_one_stream(make_client):
    client = make_client(world_overrides={"generation": "causal", "chunk_frames": 5}, max_job_frames=101)
    assert client.get("/api/config").json()["world"]["max_frames"] is None  # a stream has no end
    response = client.post("/generate", json={"prompt": "hills", "num_frames": 85, "steps": 1,
                                              "actions": forward(21)})  # more than the chunked world's 81
    assert response.status_code == 202, response.text
    status = wait_done(client, response.json()["id"])
    assert status["status"] == "done" and status["frames"] == 85
    path = client.app.state.wanfly.results.find(status["id"], ".mp4")
    assert imageio_ffmpeg.count_frames_and_secs(str(path))[0] == 85


def test_a_causal_job_must_be_whole_blocks(make_client):
    client = make_client(world_overrides={"generation": "causal", "chunk_frames": 9,
                                          "causal_settings": CausalSettings(block_frames=2)})
    response = client.post("/generate", json={"prompt": "hills", "num_frames": 13, "steps": 1})  # 3 steps
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", "num_frames"] and "not a multiple of 2" in detail["msg"]
    assert client.post("/generate", json={"prompt": "hills", "num_frames": 17, "steps": 1}).status_code == 202


def test_actions_as_text_are_held_key_fractions_of_the_worlds_full_scale(make_client):
    """The text form of the CLI and gradio over REST: forward held for 2 steps, then forward + half a left turn."""
    client = make_client()
    response = client.post("/generate", json={"prompt": "hills", "num_frames": 17, "steps": 1,
                                              "actions": "forward:2,forward+yaw_left=0.5:2"})
    assert response.status_code == 202, response.text
    assert wait_done(client, response.json()["id"])["status"] == "done"
    actions = client.app.state.wanfly.engine.get_job(response.json()["id"]).request.actions  # (4, 2, 8) raw
    full = np.asarray(client.get("/api/config").json()["world"]["full_scale"])
    expected = np.zeros((4, 2, 8))
    expected[:, 0, 0], expected[:, 1, 0] = 1, full[0]  # forward held: flag 1, the full magnitude
    expected[2:, 0, 4], expected[2:, 1, 4] = 1, 0.5 * full[4]  # yaw left at half a held key
    np.testing.assert_allclose(actions, expected, rtol=1e-6)


def test_a_multipart_upload_is_a_clear_415(make_client, tmp_path):
    """``curl -F image=@x.png`` used to be a bare 500 (the 422 could not render the form's bytes)."""
    client = make_client()
    response = client.post("/generate", files={"image": ("x.png", b"\x89PNG\r\n\x1a\n\xff\xfe" * 8, "image/png")},
                           data={"prompt": "hills"})
    assert response.status_code == 415, response.text
    assert response.json()["detail"].startswith("the body must be JSON (Content-Type: application/json), got "
                                                "multipart/form-data")
def test_a_recording_cut_off_by_a_kill_is_listed_and_downloadable_after_a_restart(make_client, tmp_path):
    """The parts a killed server left (its writer gone: no lock) are finished at the next start, said cut off."""
    folder = tmp_path / "recordings"
    store = FileStore(folder)
    finished = FlightRecorder(store, "flight-done", 8, {"prompt": "done"}, max_frames=100)
    finished.add({"index": 0, "frames": 5, "actions": forward(1)}, np.zeros((5, 32, 32, 3), np.uint8))
    finished.close()
    killed = FlightRecorder(store, "flight-kill", 8, {"prompt": "hills"}, max_frames=100)
    killed.add({"index": 0, "frames": 9, "actions": forward(2)}, np.full((9, 32, 32, 3), 90, np.uint8))
    killed.add({"index": 1, "frames": 4, "actions": forward(1)}, np.full((4, 32, 32, 3), 120, np.uint8))
    killed.abandon()  # as a kill leaves it: the parts on disk, the lock gone
    assert client_listing(make_client(recordings_dir=str(folder)), tmp_path) == {"flight-done": (5, 1, False),
                                                                               "flight-kill": (13, 3, True)}


def client_listing(client, tmp_path) -> dict:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # recovery runs on a thread at start
        entries = client.get("/recordings").json()["recordings"]
        if any(entry["cut_off"] for entry in entries):
            break
        time.sleep(0.05)
    listing = {}
    for entry in entries:
        record = client.get(entry["actions"]).json()
        video = client.get(entry["video"])
        assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
        (tmp_path / "download.mp4").write_bytes(video.content)
        frames = imageio_ffmpeg.count_frames_and_secs(str(tmp_path / "download.mp4"))[0]
        assert frames == record["frames"] == entry["frames"] == 1 + 4 * len(record["actions"]), entry
        listing[entry["id"]] = (entry["frames"], entry["steps"], entry["cut_off"])
    return listing
