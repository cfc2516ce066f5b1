"""server.guard: Host names, the Host allow-list and the Origin check (in the app: HTTP 400/403, WebSocket handshakes
refused), and the message rate limit on a fake clock. (A real uvicorn refusing them: test_main.py and
test_probe.py.)"""
import pytest
from starlette.websockets import WebSocketDisconnect

from server.guard import MessageLimit, allowed_host_names, host_allowed, host_name, origin_allowed


@pytest.mark.parametrize("header, name", [("localhost:8000", "localhost"), ("[::1]:8000", "::1"), ("[::1]", "::1"),
                                          ("Example.ORG", "example.org"), ("10.0.0.5:80", "10.0.0.5"),
                                          ("evil.example:8710", "evil.example")])
def test_host_name(header, name):
    assert host_name(header) == name


def test_allowed_hosts_default_to_local_names_the_bound_address_and_ip_addresses():
    names = allowed_host_names("0.0.0.0", [])
    for host in ("localhost:8000", "127.0.0.1:8000", "[::1]:8000", "192.168.1.20:8000", "[fe80::1]"):
        assert host_allowed(host, names), host
    for host in ("evil.example:8710", "localhost.evil.example", "", None):
        assert not host_allowed(host, names), host
    assert host_allowed("box.lan:8000", allowed_host_names("box.lan", []))  # --host box.lan
    assert host_allowed("wanfly.example.org", allowed_host_names("0.0.0.0", ["Wanfly.example.org"]))
    assert host_allowed("evil.example", allowed_host_names("0.0.0.0", ["*"]))


def test_origin_must_be_the_servers_own_or_listed():
    assert origin_allowed(None, "localhost:8000", [])  # not a browser
    assert origin_allowed("http://localhost:8000", "localhost:8000", [])
    assert not origin_allowed("http://evil.example", "localhost:8000", [])
    assert not origin_allowed("null", "localhost:8000", [])
    assert origin_allowed("http://good.example", "localhost:8000", ["http://good.example"])
    assert origin_allowed("http://evil.example", "localhost:8000", ["*"])


def test_the_app_refuses_a_wrong_host_and_a_foreign_origin(make_client):
    client = make_client()
    assert client.get("/healthz").status_code == 200
    response = client.get("/healthz", headers={"host": "evil.example:8710"})
    assert response.status_code == 400 and "Host" in response.json()["detail"]
    body = {"prompt": "x", "num_frames": 9}
    assert client.post("/generate", json=body, headers={"origin": "http://evil.example"}).status_code == 403
    assert client.post("/generate", json=body, headers={"origin": "http://localhost"}).status_code == 202
    assert client.get("/api/config", headers={"origin": "http://evil.example"}).status_code == 200  # a read
    for headers in ({"host": "evil.example:8710", "origin": "http://evil.example:8710"},  # DNS rebinding
                    {"origin": "http://evil.example"}):
        with pytest.raises(WebSocketDisconnect) as refused:
            with client.websocket_connect("/ws", headers=headers):
                pass
        assert refused.value.code == 1008
    with client.websocket_connect("/ws", headers={"origin": "http://localhost"}) as ws:
        ws.send_json({"type": "ping"})
        assert ws.receive_json() == {"type": "pong"}
    metrics = client.get("/metrics").text
    assert 'wanfly_errors_total{code="host"} 2' in metrics and 'wanfly_errors_total{code="origin"} 2' in metrics


def test_allowed_hosts_star_turns_the_host_check_off(make_client):
    client = make_client(allowed_hosts=["*"])
    assert client.get("/healthz", headers={"host": "evil.example"}).status_code == 200


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_message_limit_drops_over_the_rate_then_closes_if_it_goes_on():
    clock = Clock()
    limit = MessageLimit(per_s=10, unit_bytes=100, burst_bytes=1000, clock=clock)
    assert [limit.check(10) for _ in range(20)] == ["ok"] * 20  # a burst of 2 s worth
    assert limit.check(10) == "drop"
    clock.now += 1.0  # 10 more allowed, a second of patience back
    assert [limit.check(10) for _ in range(10)] == ["ok"] * 10
    verdicts = [limit.check(10) for _ in range(22)]
    assert verdicts[:20] == ["drop"] * 20 and verdicts[20:] == ["close"] * 2  # patience: 2 s worth (20), 1 came back
    assert limit.dropped == 23


def test_message_limit_at_the_allowed_rate_never_drops_and_huge_messages_count_more():
    clock = Clock()
    limit = MessageLimit(per_s=10, unit_bytes=100, burst_bytes=1000, clock=clock)
    for _ in range(200):  # 10 s at exactly the rate
        assert limit.check(50) == "ok"
        clock.now += 0.1
    assert limit.warn_now() and not limit.warn_now()
    clock.now += 1.0
    assert limit.warn_now()
    limit = MessageLimit(per_s=10, unit_bytes=100, burst_bytes=1000, clock=clock)  # bytes: 2000 (2 s worth)
    assert limit.check(1500) == "ok"
    assert limit.check(1500) == "drop"  # over the byte budget: counts 1 + 15
    assert limit.check(1500) == "close"  # 32 > 2 s worth (20)
