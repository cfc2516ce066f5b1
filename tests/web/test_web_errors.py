"""The page recovers from every error (headless Chromium, a real server on the tiny preset): fields and files checked
before anything is sent, server refusals shown next to their field, stop before the flight runs, a connection closed
before it starts, a flight the server ends; each ends with start working again. A mocked /ws (Playwright's
``route_web_socket``) plays the server answers a real server gives only by chance or on failure. And /docs works
offline."""
import io
import json

import pytest
from PIL import Image

pytestmark = pytest.mark.browser
TIMEOUT_MS = 45_000


def idle(page):
    """Start works, stop does not, no flight is wanted."""
    page.wait_for_selector("#start:not([disabled])", timeout=TIMEOUT_MS)
    assert page.is_disabled("#stop")
    assert page.evaluate("!window.wanfly.wantFlight && !window.wanfly.flying && window.wanfly.ws === null")


def field_error(page, field):
    page.wait_for_selector(f"#err-{field}:not([hidden])", timeout=TIMEOUT_MS)
    return page.inner_text(f"#err-{field}")


def png_bytes(width, height) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (40, 90, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_fields_and_files_are_checked_before_sending_and_blanks_mean_the_worlds_defaults(page, base_url):
    sockets = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    page.goto(base_url + "/")
    page.wait_for_selector("#start:not([disabled])", timeout=TIMEOUT_MS)
    config = page.evaluate("window.wanfly.config")
    notes = page.inner_text("#world-notes")  # what to expect, from the world (serve.json / the preset)
    assert config["world"]["notes"] and notes == "What to expect: " + config["world"]["notes"]

    page.fill("#steps", "999")
    page.click("#start")
    assert "steps: a whole number from 1 to 50" in field_error(page, "steps")
    page.fill("#steps", "")
    page.fill("#seed", "-5")
    page.click("#start")
    assert "seed: a whole number from 0" in field_error(page, "seed")
    assert page.is_hidden("#err-steps")
    page.fill("#seed", "")
    page.set_input_files("#upload", files=[{"name": "notes.png", "mimeType": "image/png",
                                            "buffer": b"a text file renamed .png\n"}])
    assert "notes.png: its contents are not a PNG, JPEG or WebP image" in field_error(page, "upload")
    page.click("#start")
    assert "notes.png" in field_error(page, "upload")
    page.set_input_files("#upload", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello"}])
    assert "notes.txt: not a PNG, JPEG or WebP file" in field_error(page, "upload")
    idle(page)
    assert sockets == []  # nothing was sent

    page.select_option("#sample", index=0)  # picking a sample drops the refused file
    assert page.is_hidden("#err-upload") and page.input_value("#upload") == ""
    page.click("#start")  # blank steps and seed: the world's steps and a random seed
    page.wait_for_function("window.wanfly.flying && window.wanfly.player.shown > 0", timeout=TIMEOUT_MS)
    assert page.evaluate("window.wanfly.ready.steps") == config["world"]["steps"]
    page.click("#player")
    page.click("#stop")  # the click blurs the player while it flies: the steering hint must not stay
    page.wait_for_selector("#rec-video", timeout=TIMEOUT_MS)
    idle(page)
    assert page.is_hidden("#focus-hint") and page.inner_text("#status") == "stopped"


def test_a_server_refusal_is_shown_next_to_its_field_and_start_works_again(page, base_url, tmp_path):
    page.goto(base_url + "/")
    page.wait_for_selector("#start:not([disabled])", timeout=TIMEOUT_MS)
    huge = tmp_path / "huge.png"  # decodes in the browser; the server refuses its 16.8 M pixels
    huge.write_bytes(png_bytes(4100, 4100))
    page.set_input_files("#upload", str(huge))
    page.wait_for_function("window.wanfly.upload !== null", timeout=TIMEOUT_MS)
    page.click("#start")
    assert field_error(page, "upload").startswith("bad_image: image: 4100x4100 pixels exceed the limit")
    idle(page)
    assert page.inner_text("#status") == "not started: see the marked field"
    page.select_option("#sample", index=1)
    page.click("#start")  # the same page flies
    page.wait_for_function("window.wanfly.flying && window.wanfly.player.shown > 0", timeout=TIMEOUT_MS)
    page.click("#stop")
    page.wait_for_selector("#rec-video", timeout=TIMEOUT_MS)
    idle(page)


READY = {"type": "ready", "session": "s1", "fps": 16, "chunk_frames": 9, "actions": ["Forward"] * 8,
         "weights": "mock", "random_weights": True, "width": 64, "height": 64, "seed": 1, "steps": 2,
         "full_scale": [1.0] * 8, "generation": "chunked"}


def mock_server(page, answer):
    """/ws answered by ``answer(route, message)`` for each client message; returns the messages received."""
    received = []

    def handler(route):
        def on_message(text):
            message = json.loads(text)
            received.append(message["type"])
            answer(route, message)
        route.on_message(on_message)
    page.route_web_socket("**/ws", handler)
    return received


def start(page, base_url):
    page.goto(base_url + "/")
    page.wait_for_selector("#start:not([disabled])", timeout=TIMEOUT_MS)
    page.click("#start")


def error(code, message):
    return json.dumps({"type": "error", "code": code, "message": message})


def test_a_refused_start_marks_the_field_the_server_names(page, base_url):
    mock_server(page, lambda route, m: m["type"] == "start" and route.send(
        error("bad_field", "seed: must be at most 2147483647, got 3000000000")))
    start(page, base_url)
    assert field_error(page, "seed") == "bad_field: seed: must be at most 2147483647, got 3000000000"
    idle(page)


def test_stop_answered_not_started_puts_the_page_back(page, base_url):
    def answer(route, message):
        if message["type"] == "start":
            route.send(json.dumps(READY))
        elif message["type"] == "stop":
            route.send(error("not_started", "stop without a flight"))
    received = mock_server(page, answer)
    start(page, base_url)
    page.wait_for_function("window.wanfly.flying", timeout=TIMEOUT_MS)
    page.click("#stop")
    idle(page)
    assert page.inner_text("#status") == "stopped" and "not_started" in page.inner_text("#message")
    assert received[0] == "start" and "stop" in received


def test_stop_before_the_flight_starts(page, base_url):
    received = mock_server(page, lambda route, m: None)  # the start is never answered
    start(page, base_url)
    page.wait_for_function("window.wanfly.ws && window.wanfly.ws.opened", timeout=TIMEOUT_MS)
    page.click("#stop")
    idle(page)
    assert page.inner_text("#status") == "stopped before the flight started" and "stop" not in received


def test_a_connection_closed_before_the_flight_starts(page, base_url):
    mock_server(page, lambda route, m: m["type"] == "start" and route.close(code=1011, reason="internal error"))
    start(page, base_url)
    idle(page)
    assert page.inner_text("#message") == "the connection closed before the flight started (code 1011: internal error)"


def test_a_flight_the_server_ends_puts_the_page_back(page, base_url):
    def answer(route, message):
        if message["type"] == "start":
            route.send(json.dumps(READY))
            route.send(error("generation_failed", "generation failed; the flight was stopped"))
    mock_server(page, answer)
    start(page, base_url)
    idle(page)
    assert page.inner_text("#status") == "the flight stopped: generation failed"
    assert "generation_failed" in page.inner_text("#message")


def test_the_api_docs_page_works_offline(page, base_url):
    """/docs renders the REST API with every request to another host refused (an offline deployment): Swagger UI's
    script and style come from this server."""
    elsewhere = []

    def only_local(route):
        if route.request.url.startswith(base_url):
            return route.continue_()
        elsewhere.append(route.request.url)
        return route.abort()
    page.route("**/*", only_local)
    page.goto(base_url + "/docs")
    page.wait_for_selector("#operations-jobs-generate_generate_post", timeout=TIMEOUT_MS)
    assert elsewhere == []
    page.goto(base_url + "/redoc")
    page.wait_for_selector("text=/generate", timeout=TIMEOUT_MS)
    assert elsewhere == ["https://cdn.redoc.ly/redoc/logo-mini.svg"]  # ReDoc's "powered by" logo only
