"""server.cluster.proxy's InputThinner: what a flight's replica receives through Serve's proxy. Changes and
everything else pass at once, an unchanged input state at most every INPUT_REFRESH_S, and the replica's input
timeline builds the same actions from what passes as from every report. No Ray needed (plain ASGI calls)."""
import asyncio
import json

import numpy as np

from models.action_format import DEFAULT_FULL_SCALE
from server.cluster.proxy import INPUT_REFRESH_S, FlightGuard, InputThinner, proxy_middlewares
from server.inputs import STALE_AFTER_S, InputTimeline

FORWARD = [1, 0, 0, 0, 0, 0, 0, 0]
FORWARD_YAW = [1, 0, 0, 0, 1, 0, 0, 0]


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def text(body) -> dict:
    return {"type": "websocket.receive", "text": body if isinstance(body, str) else json.dumps(body)}


def report(seq, t_s, flags, mags=None):
    return {"type": "input", "seq": seq, "t": t_s * 1000, "flags": flags, "mags": mags if mags is not None else flags}


def relay(arrivals, path="/ws", kind="websocket", refresh_s=INPUT_REFRESH_S):
    """``arrivals``: (proxy time s, ASGI message) in order. Returns the messages the app behind the thinner got."""
    clock, got = Clock(), []
    queue = list(arrivals) + [(arrivals[-1][0] if arrivals else 0.0, {"type": "websocket.disconnect"})]

    async def receive():
        when, message = queue.pop(0)
        clock.now = when
        return message

    async def app(scope, receive, send):
        while True:
            message = await receive()
            got.append(message)
            if message["type"] == "websocket.disconnect":
                return

    thinner = InputThinner(app, refresh_s=refresh_s, clock=clock)
    asyncio.run(thinner({"type": kind, "path": path}, receive, None))
    return got[:-1]


def bodies(messages):
    return [json.loads(m["text"]) for m in messages]


def test_a_held_state_reaches_the_replica_every_refresh_and_each_change_at_once():
    arrivals = [(0.0, text({"type": "start", "prompt": "p"}))]
    arrivals += [(i * 0.04, text(report(i, i * 0.04, FORWARD))) for i in range(10)]  # 25 Hz, 0 .. 0.36 s
    arrivals += [(0.37, text(report(10, 0.37, FORWARD_YAW)))]  # a change
    arrivals += [(0.38, text({"type": "played", "frame": 3}))]
    got = bodies(relay(arrivals))
    seqs = [b.get("seq") for b in got if b["type"] == "input"]
    assert seqs == [0, 5, 10]  # 0.0, then 0.2 s later, then the change at once
    assert [b["type"] for b in got] == ["start", "input", "input", "input", "played"]


def test_anything_but_a_well_formed_repeat_passes_for_the_replica_to_judge():
    repeats = [report(0, 0.0, FORWARD), report(1, 0.01, FORWARD)]
    odd = [
        "not json", json.dumps([1, 2]),
        json.dumps(report(0, 0.02, FORWARD)),  # seq not increasing: the replica refuses it by name
        json.dumps(report(5, -1.0, FORWARD)),  # t going backwards
        json.dumps(report(6, 0.03, [1, 0, 0, 0, 0, 0, 0, 2])),  # a flag that is not 0/1
        json.dumps(report(7, 0.04, FORWARD, [1.5, 0, 0, 0, 0, 0, 0, 0])),  # a magnitude past full
        json.dumps(report(8, 0.05, FORWARD, [1, 0, 0])),  # lengths differ
        json.dumps({**report(9, 0.06, FORWARD), "seq": True}),
    ]
    arrivals = [(0.0, text(repeats[0])), (0.01, text(repeats[1]))] + [(0.01, text(body)) for body in odd]
    arrivals.append((0.02, {"type": "websocket.receive", "bytes": b"\x00"}))
    got = relay(arrivals)
    assert [m.get("text") for m in got[1:-1]] == odd  # the repeat at 0.01 s is the only one held back
    assert got[0]["text"] == json.dumps(repeats[0]) and got[-1]["bytes"] == b"\x00"


def test_a_new_flight_on_the_socket_gets_its_first_report_at_once():
    arrivals = [(0.0, text(report(0, 0.0, FORWARD))), (0.05, text({"type": "stop"})),
                (0.06, text({"type": "start", "prompt": "p"})), (0.07, text(report(1, 0.07, FORWARD)))]
    assert [b["type"] for b in bodies(relay(arrivals))] == ["input", "stop", "start", "input"]


def test_other_paths_and_http_pass_untouched():
    arrivals = [(0.0, text(report(0, 0.0, FORWARD))), (0.01, text(report(1, 0.01, FORWARD)))]
    assert len(relay(arrivals, path="/other")) == 2
    assert len(relay(arrivals, kind="http")) == 2


def test_the_replica_builds_the_same_actions_from_what_passes():
    """25 Hz reports with a few changes, as the browser sends them: the timeline fed every report and the timeline
    fed only what the thinner relays give the same (k, 2, 8) actions for every block window."""
    states = [(0.0, FORWARD), (0.9, FORWARD_YAW), (1.45, [0] * 8), (2.3, FORWARD)]
    arrivals, seq = [], 0
    for i in range(int(3.0 * 25)):
        t = i / 25
        flags = [s for start, s in states if start <= t][-1]
        arrivals.append((t, text(report(seq, t, flags))))
        seq += 1
    passed = relay(arrivals)
    assert len(passed) < len(arrivals) / 3  # most of them were repeats

    def actions(messages):
        clock = Clock()
        timeline = InputTimeline(DEFAULT_FULL_SCALE, fps=16, clock=clock)
        for m in messages:
            b = json.loads(m["text"])
            clock.now = b["t"] / 1000
            timeline.add(b["seq"], b["t"], b["flags"], b["mags"])
        return [timeline.actions(4, end=end)[0] for end in np.arange(1.0, 3.6, 0.1)]

    every, thinned = actions([m for _, m in arrivals]), actions(passed)
    assert all(np.array_equal(a, b) for a, b in zip(every, thinned))
    assert any(a[:, 0].sum() > 0 for a in thinned)  # the windows do hold actions


def test_the_refresh_keeps_a_held_state_alive_and_both_guards_are_installed():
    assert INPUT_REFRESH_S * 4 <= STALE_AFTER_S  # several refreshes before the replica lets a state go
    assert [m.cls for m in proxy_middlewares()] == [FlightGuard, InputThinner]
