"""server.inputs: samples -> (k, 2, 8) raw actions, action specs."""
import numpy as np
import pytest

from models.action_format import DEFAULT_FULL_SCALE, parse_actions
from server.inputs import MAX_SAMPLES, STALE_AFTER_S, InputTimeline, parse_action_spec

FPS = 16
INTERVAL = 4 / FPS  # 0.25 s
FWD, BACK, LEFT, YAW_L, PITCH_UP = 0, 1, 2, 4, 6


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def feed(timeline, clock, start, stop, flags, mags=None, hz=25):
    """Report a constant state from client time ``start`` to ``stop`` (seconds), received without delay."""
    mags = mags if mags is not None else flags
    t = start
    while t < stop - 1e-9:
        clock.now = 100.0 + t
        timeline.add(round(t * 1000), t * 1000, flags, mags)
        t += 1 / hz
    clock.now = 100.0 + stop


def one_hot(*indices, value=1):
    v = [0] * 8
    for i in indices:
        v[i] = value
    return v


def test_held_key_is_full_scale_and_two_actions_at_once():
    clock = Clock()
    timeline = InputTimeline(DEFAULT_FULL_SCALE, FPS, clock=clock)
    feed(timeline, clock, 0.0, 1.0, one_hot(FWD))
    feed(timeline, clock, 1.0, 1.6, one_hot(FWD, YAW_L))
    raw, seq = timeline.actions(2)  # window [1.1, 1.6): forward + yaw left throughout
    assert raw.shape == (2, 2, 8) and seq == 1560
    expected = np.zeros((2, 8))
    expected[:, FWD] = (1, 0.01)
    expected[:, YAW_L] = (1, 1.0)
    np.testing.assert_allclose(raw, np.stack([expected, expected]))
    parse_actions(raw)  # a valid (T, 2, 8) for the pipeline


def test_hold_fraction_decides_the_flag():
    clock = Clock()
    timeline = InputTimeline(DEFAULT_FULL_SCALE, FPS, clock=clock)
    feed(timeline, clock, 0.0, 0.6, one_hot())  # nothing for 0.6 s ...
    feed(timeline, clock, 0.6, 0.9, one_hot(LEFT))  # ... Left held from 0.6 (window [0.4, 0.65) and [0.65, 0.9))
    raw, _ = timeline.actions(2)
    assert raw[0, 0, LEFT] == 0 and raw[0, 1, LEFT] == 0  # held 0.05 of 0.25 s: below HOLD_FRACTION
    assert raw[1, 0, LEFT] == 1 and raw[1, 1, LEFT] == pytest.approx(0.01)


def test_stick_deflection_sets_magnitude():
    clock = Clock()
    timeline = InputTimeline(DEFAULT_FULL_SCALE, FPS, clock=clock)
    feed(timeline, clock, 0.0, 0.5, one_hot(FWD, PITCH_UP), mags=[0.5, 0, 0, 0, 0, 0, 0.25, 0])
    raw, _ = timeline.actions(1)
    assert raw[0, 1, FWD] == pytest.approx(0.005) and raw[0, 1, PITCH_UP] == pytest.approx(0.25)


def test_opposites_cancel_and_stale_input_is_released():
    clock = Clock()
    timeline = InputTimeline(DEFAULT_FULL_SCALE, FPS, clock=clock)
    feed(timeline, clock, 0.0, 0.5, one_hot(FWD, BACK, YAW_L))
    raw, _ = timeline.actions(1)
    assert raw[0, 0].tolist() == one_hot(YAW_L)
    clock.now += STALE_AFTER_S + 1.0  # the client went silent while holding
    raw, seq = timeline.actions(2)
    assert not raw.any() and seq == 480


def test_time_going_backwards_is_rejected():
    timeline = InputTimeline(DEFAULT_FULL_SCALE, FPS, clock=Clock())
    timeline.add(0, 1000.0, one_hot(), one_hot())
    with pytest.raises(ValueError, match="^t:"):
        timeline.add(1, 999.0, one_hot(), one_hot())


def test_action_spec():
    raw = parse_action_spec("forward:2,forward+yaw_left=0.5:1,hover:1")
    assert raw.shape == (4, 2, 8)
    np.testing.assert_allclose(raw[0, :, FWD], [1, 0.01], rtol=1e-6)  # float32, as the pipeline takes them
    assert raw[2, 1, YAW_L] == 0.5 and not raw[3].any()
    for bad, field in (("forward", "name:steps"), ("fly:3", "unknown action"), ("forward=2:1", "0..1"),
                       ("forward:0", "name:steps")):
        with pytest.raises(ValueError, match=field):
            parse_action_spec(bad)


def test_a_causal_block_takes_the_input_as_of_its_cut():
    """Just-in-time blocks: a key pressed just before the cut counts in full (a window average would give it
    half an interval at best), every step of the block gets it, and a released key is off at the next cut."""
    clock = Clock()
    timeline = InputTimeline(DEFAULT_FULL_SCALE, FPS, clock=clock)
    feed(timeline, clock, 0.0, 1.0, one_hot())
    raw, seq = timeline.block_actions(2)
    assert raw.shape == (2, 2, 8) and not raw.any() and seq == 960
    feed(timeline, clock, 1.0, 1.02, one_hot(FWD, YAW_L), mags=[0.5, 0, 0, 0, 1, 0, 0, 0])  # one sample, 20 ms ago
    raw, seq = timeline.block_actions(2)
    assert seq == 1000
    np.testing.assert_allclose(raw[:, :, FWD], [[1, 0.005]] * 2)  # its magnitude: half of full scale
    np.testing.assert_allclose(raw[:, :, YAW_L], [[1, 1.0]] * 2)
    assert timeline.actions(1)[0][0, 0, FWD] == 0  # the chunked rule: held 20 ms of a 250 ms interval
    feed(timeline, clock, 1.02, 1.5, one_hot(FWD, YAW_L), mags=[0.5, 0, 0, 0, 1, 0, 0, 0])
    feed(timeline, clock, 1.5, 1.52, one_hot(YAW_L))  # forward released after the last cut
    raw, _ = timeline.block_actions(1)
    assert raw[0, 0].tolist() == one_hot(YAW_L)  # no lingering forward


def test_a_tap_between_two_cuts_is_not_lost():
    clock = Clock()
    timeline = InputTimeline(DEFAULT_FULL_SCALE, FPS, clock=clock)
    feed(timeline, clock, 0.0, 0.5, one_hot())
    assert not timeline.block_actions(1)[0].any()
    feed(timeline, clock, 0.5, 0.56, one_hot(LEFT), mags=one_hot(LEFT, value=0.8))  # a 60 ms tap ...
    feed(timeline, clock, 0.56, 1.0, one_hot())  # ... released well before the next cut
    raw, _ = timeline.block_actions(1)
    assert raw[0, 0].tolist() == one_hot(LEFT) and raw[0, 1, LEFT] == pytest.approx(0.008)
    assert not timeline.block_actions(1)[0].any()  # counted once: the cut after shows it released
    # a tap that arrives after a cut, late, with client times that map to just before that cut
    clock.now = 101.2
    assert not timeline.block_actions(1)[0].any()
    timeline.add(2000, 1150.0, one_hot(YAW_L), one_hot(YAW_L), received=101.21)
    timeline.add(2001, 1160.0, one_hot(), one_hot(), received=101.22)
    assert timeline.block_actions(1)[0][0, 0].tolist() == one_hot(YAW_L)


def test_a_causal_block_cancels_opposites_and_releases_stale_input():
    clock = Clock()
    timeline = InputTimeline(DEFAULT_FULL_SCALE, FPS, clock=clock)
    feed(timeline, clock, 0.0, 0.5, one_hot(FWD, BACK, YAW_L))
    assert timeline.block_actions(1)[0][0, 0].tolist() == one_hot(YAW_L)
    clock.now += STALE_AFTER_S + 0.5  # the client went silent while holding
    raw, seq = timeline.block_actions(1)
    assert not raw.any() and seq == 480


# ---- issue 23: what the mutation run showed nothing caught ----------------------------------------------------
def test_one_late_packet_does_not_delay_later_inputs():
    """Client times map to server time by the fastest packet's offset: one packet delayed 300 ms in the network
    must not shift every later input by 300 ms (the slowest packet's offset would)."""
    timeline = InputTimeline(DEFAULT_FULL_SCALE, FPS, clock=lambda: 0.0)
    timeline.add(0, 0.0, one_hot(), one_hot(), received=100.0)  # on time: offset 100.0
    timeline.add(1, 40.0, one_hot(), one_hot(), received=100.34)  # 300 ms late
    timeline.add(2, 500.0, one_hot(FWD), one_hot(FWD), received=100.5)  # forward from client 0.5 s, on time
    raw, seq = timeline.actions(2, end=100.75)  # intervals [100.25, 100.5), [100.5, 100.75)
    assert seq == 2
    assert raw[:, 0, FWD].tolist() == [0, 1], raw[:, 0, FWD]  # the slowest offset would start forward at 100.8
    assert raw[1, 1, FWD] == pytest.approx(0.01)


# ---- mutation run (scripts/mutation.sh server/inputs.py) ----------------------------------------------------------
def test_a_causal_block_is_cut_at_the_given_time_and_an_empty_timeline_gives_seq_minus_1():
    clock = Clock()
    timeline = InputTimeline(DEFAULT_FULL_SCALE, FPS, clock=clock)
    raw, seq = timeline.block_actions(2)
    assert raw.shape == (2, 2, 8) and not raw.any() and seq == -1
    feed(timeline, clock, 0.0, 0.5, one_hot(FWD))  # the clock now reads 100.5
    assert timeline.block_actions(1)[0][0, 0, FWD] == 1
    assert timeline.block_actions(1, end=100.5 + STALE_AFTER_S + 0.1)[0][0, 0, FWD] == 0  # stale at that cut
    assert timeline.block_actions(1, end=100.6)[0][0, 0, FWD] == 1  # still held at that one


def test_action_spec_edge_cases():
    np.testing.assert_allclose(parse_action_spec("hover+forward:1")[0, :, FWD], [1, 0.01], rtol=1e-6)  # hover adds
    assert not parse_action_spec("forward=0:1").any()  # a zero fraction is allowed: no motion
    for bad, message in (("forward:x", "segment 'forward:x' is not 'name:steps'"),
                         ("forward:2:3", "unknown action 'forward:2'"),  # the count is after the last colon
                         ("forward=abc:1", "'forward=abc': the fraction after '=' must be a number")):
        with pytest.raises(ValueError, match=f"^actions: {message}"):
            parse_action_spec(bad)


def test_bad_full_scale_and_time_going_backwards_read_exactly():
    with pytest.raises(ValueError, match=r"^full_scale: expected 8 values, got 7$"):
        InputTimeline(DEFAULT_FULL_SCALE[:7], FPS)
    timeline = InputTimeline(DEFAULT_FULL_SCALE, FPS, clock=Clock())
    timeline.add(0, 1000.0, one_hot(), one_hot())
    timeline.add(1, 1000.0, one_hot(FWD), one_hot(FWD))  # the same client time twice: a change in the same ms
    with pytest.raises(ValueError, match=r"^t: went backwards \(999\.0 ms after 1000 ms\)$"):
        timeline.add(2, 999.0, one_hot(), one_hot())


def test_a_late_packet_is_placed_at_its_client_time():
    """t in ms, mapped with the on-time packet's offset: a packet 200 ms late still starts its state at its own
    client time (a sample exactly at a window's end is not inside it)."""
    timeline = InputTimeline(DEFAULT_FULL_SCALE, FPS, clock=lambda: 0.0)
    timeline.add(0, 5000.0, one_hot(), one_hot(), received=100.0)  # offset 95.0
    timeline.add(1, 15_000.0, one_hot(FWD), one_hot(FWD), received=110.2)  # 200 ms late: at 110.0
    assert timeline.actions(1, end=110.0)[1] == 0
    raw, seq = timeline.actions(1, end=110.25)  # [110.0, 110.25): forward throughout
    assert seq == 1 and raw[0, :, FWD].tolist() == [1, pytest.approx(0.01)]


def test_each_interval_counts_its_own_time_and_half_an_interval_is_enough():
    timeline = InputTimeline(DEFAULT_FULL_SCALE, FPS, clock=lambda: 0.0)
    raw, seq = timeline.actions(3, end=0.25)
    assert raw.shape == (3, 2, 8) and not raw.any() and seq == -1  # no samples yet
    timeline.add(0, 0.0, one_hot(), one_hot(), received=0.0)
    timeline.add(1, 125.0, one_hot(YAW_L), one_hot(YAW_L), received=0.125)  # held exactly 0.125 of 0.25 s
    assert timeline.actions(1, end=0.25)[0][0, 0, YAW_L] == 1
    assert timeline.actions(1, end=0.0)[1] == -1  # every sample is at or after the end
    held = InputTimeline(DEFAULT_FULL_SCALE, FPS, clock=lambda: 0.0)
    for seq in range(25):  # forward for the first 0.3 s, then released (seq 0, 1, 2, ...: not times)
        t = 0.02 * seq
        held.add(seq, t * 1000, one_hot(FWD) if t < 0.3 else one_hot(), one_hot(FWD), received=100.0 + t)
    first = held.actions(2, end=100.5)  # intervals [100, 100.25), [100.25, 100.5)
    assert first[0][:, 0, FWD].tolist() == [1, 0]
    again = held.actions(2, end=100.5)  # a window is cut again: nothing it needs was forgotten
    assert np.array_equal(again[0], first[0]) and again[1] == first[1] == 24


def test_a_tap_before_the_first_block_cut_counts():
    clock = Clock()
    timeline = InputTimeline(DEFAULT_FULL_SCALE, FPS, clock=clock)
    feed(timeline, clock, 0.0, 0.04, one_hot(LEFT))  # the very first sample presses Left ...
    feed(timeline, clock, 0.04, 0.2, one_hot())  # ... released before the first cut
    assert timeline.block_actions(1)[0][0, 0].tolist() == one_hot(LEFT)


def test_a_flood_of_samples_keeps_memory_bounded():
    timeline = InputTimeline(DEFAULT_FULL_SCALE, FPS, clock=lambda: 0.0)
    for seq in range(MAX_SAMPLES + 50):
        timeline.add(seq, float(seq), one_hot(), one_hot(), received=seq / 1000)
    assert len(timeline._samples) == MAX_SAMPLES


def test_block_cuts_track_presses_after_the_first_sample_and_keep_a_held_magnitude():
    clock = Clock()
    timeline = InputTimeline(DEFAULT_FULL_SCALE, FPS, clock=clock)
    feed(timeline, clock, 0.0, 0.5, one_hot(FWD), mags=one_hot(FWD, value=0.5))
    assert timeline.block_actions(1)[0][0, 1, FWD] == pytest.approx(0.005)
    raw, _ = timeline.block_actions(1)  # no new sample since the last cut: still held, same magnitude
    assert raw[0, :, FWD].tolist() == [1, pytest.approx(0.005)]
    feed(timeline, clock, 0.5, 0.6, one_hot())
    feed(timeline, clock, 0.6, 0.66, one_hot(LEFT))  # a tap after a neutral sample since the last cut
    feed(timeline, clock, 0.66, 0.8, one_hot())
    assert timeline.block_actions(1)[0][0, 0].tolist() == one_hot(LEFT)


def test_a_key_held_at_zero_magnitude_is_not_pressed_again():
    """Held (flag 1, magnitude 0) at one cut, still held then released before the next: no new press."""
    clock = Clock()
    timeline = InputTimeline(DEFAULT_FULL_SCALE, FPS, clock=clock)
    feed(timeline, clock, 0.0, 0.5, one_hot(FWD), mags=one_hot())
    timeline.block_actions(1)
    feed(timeline, clock, 0.5, 0.54, one_hot(FWD), mags=one_hot())
    feed(timeline, clock, 0.54, 0.8, one_hot())
    assert not timeline.block_actions(1)[0].any()


def test_a_block_cut_exactly_stale_after_the_last_sample_releases_it():
    timeline = InputTimeline(DEFAULT_FULL_SCALE, FPS, clock=lambda: 0.0)
    timeline.add(0, 0.0, one_hot(FWD), one_hot(FWD), received=0.0)
    assert timeline.block_actions(1, end=0.5)[0][0, 0, FWD] == 1
    assert timeline.block_actions(1, end=STALE_AFTER_S)[0][0, 0, FWD] == 0  # exactly STALE_AFTER_S later
