"""server.gradio_app: the action timeline editor's conversions, and the app mounted behind the token."""
import json

import numpy as np
import pytest

from models.action_format import DEFAULT_FULL_SCALE
from server.gradio_app import spec_to_table, table_to_actions


def test_gradio_timeline_and_mount(make_client):
    table = spec_to_table("forward:1,yaw_left=0.5:1")
    raw = table_to_actions(table, DEFAULT_FULL_SCALE)
    np.testing.assert_allclose(raw[:, 1, 0], [0.01, 0.0])
    assert raw[1, 0, 4] == 1 and raw[1, 1, 4] == 0.5
    with pytest.raises(ValueError, match="row 1, Forward"):
        table_to_actions([[2] + [0] * 7], DEFAULT_FULL_SCALE)
    client = make_client(gradio=True, token="t0ken")
    assert client.get("/gradio/").status_code == 401
    page = client.get("/gradio/?token=t0ken")
    assert page.status_code == 200 and "gradio" in page.text.lower()
    assert "wanfly_token=t0ken" in page.headers["set-cookie"]
    assert client.get("/gradio/config").status_code == 200  # the cookie carries the token to gradio's requests


def test_gradio_redirects_and_fills_the_loaded_worlds_defaults(make_client):
    """The page is built before the world loads: its fields are filled from the loaded world when a browser loads
    it (the page's load event, called here as gradio's client does), and /gradio leads to /gradio/."""
    client = make_client(world_overrides={"prompt": "a drone over the sea", "steps": 3, "sample": "sand-dunes"},
                         gradio=True)
    response = client.get("/gradio?token=x", follow_redirects=False)
    assert response.status_code == 307 and response.headers["location"] == "http://localhost/gradio/?token=x"
    event = client.post("/gradio/gradio_api/call/world_defaults", json={"data": []}).json()["event_id"]
    stream = client.get(f"/gradio/gradio_api/call/world_defaults/{event}").text
    data = json.loads(stream.split("event: complete\ndata: ", 1)[1].splitlines()[0])
    assert data[:3] == ["a drone over the sea", 3, "sand-dunes"]
    assert "What to expect: " + client.get("/api/config").json()["world"]["notes"] in data[3]
