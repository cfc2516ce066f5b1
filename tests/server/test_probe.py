"""scripts/probe.py in small against a real ``python -m server`` (the random world) on loopback: a barrage of malformed
messages of every kind, a flooder, an oversized message and a dead client beside a viewer's flight, then a
``kill -9`` of the whole process tree mid-flight (the full goal, 10,000 messages and 20 kills:
``python scripts/probe.py``; numbers in server/README.md). Rebinding, token and Origin refusals on a real server:
test_main.py and test_guard.py."""
from scripts import probe


def test_hostile_input_and_a_hard_kill(tmp_path):
    result = probe.run_barrage(messages=1500, work=tmp_path, server_args=[], senders=1, baseline_s=3.0,
                               polite_s=3.0, kill_after=True)
    assert result["server_alive"] and result["log_problems"] == [], result  # no crash, no traceback
    assert result["malformed_sent"] >= 1500
    sender = result["flying_sender"]  # malformed messages at half the rate limit: answered, its flight goes on
    assert sender["close"] is None and sender["errors"] >= 250 and sender["chunks_during"] > 0, sender
    assert set(result["flooder"]["closes"]) <= {"1008", "open"}  # closed by the rate limit, or done before it
    assert result["oversized_close"] == 1009
    assert result["dead_client_paused_after_s"] is not None and result["dead_client_paused_after_s"] < 10
    assert result["viewer_closed"] is None and result["viewer_fps_during"], result
    # The frame rate ratio is measured against other jobs' load on a shared machine: 0.9 is the goal of the full
    # probe; here 0.75 still fails the unlimited server (0.48-0.78 in the runs).
    assert result["viewer_ratio"] >= 0.75, result
    kill = result["kill"]
    assert any("ffmpeg" in name for name in kill["killed"]), kill  # the encoder died with the server
    assert kill["ok"] and kill["frames"] == 1 + 4 * kill["steps_recorded"], kill
    assert kill["steps_recorded"] == 0 or kill["recovered_frames"] == kill["frames"]

