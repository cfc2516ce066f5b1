"""Long flights against ground truth: ``python -m training.evaluate --long_flight --world DIR [DIR ...]``.

Each world flies a scripted flight of ``--seconds`` from held-out synthetic scenes, where the renderer
(``training.data.synthetic``) gives the true video of the same actions from the same start: generated frame i is
compared with true frame i. A world flies the way its ``serve.json`` says (``models.serve_config``): ``chunked``
worlds chunk after chunk from the previous chunk's last frame (``training.evaluation.rollout.chunked_flight``, as
the server does), ``causal`` worlds as one stream (``pipe.open_stream``, one block per step).

Script (``flight_script``): rounds of ``ROUND`` in a seeded order per round, at the world's suite magnitudes (what a
held key sends). A round nets no yaw and no pitch and its moves cancel up to the heading changes between them, so a
flight of any length stays near its start, inside the scene, pitch within one segment of level.
Per window of ``--window_seconds`` (frames 4a+1 .. 4b of its intervals a..b-1, pooled over scenes): action-following
accuracy, PSNR to the truth, a sharpness ratio and a colour-histogram distance, beside the same for the true video
through the world's VAE (``training.evaluation.long_flight_scores``, which also defines the drift).
Edges: accuracy of the first vs the last ``--edge_seconds`` (default 10, at most half the flight).
Out-and-back (``out_and_back_scripts``): yaw ``--turn_degrees`` right then as far left, and forward then back as long;
PSNR of the frame after returning to the start frame (``return_psnr_db``) and of the far frame (``far_psnr_db``),
generated and true.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

from models.action_format import ACTION_NAMES, FRAMES_PER_LATENT, NUM_ACTIONS, num_actions_for_frames
from models.loading import build_pipeline
from models.serve_config import ServeConfig, load_serve_config
from training.data.scene import make_scene
from training.data.synthetic import fly, held_out_start, render_flight
from training.evaluation.flow import estimate_motion, motion_to_actions
from training.evaluation.long_flight_scores import frame_measures, rounded, summarise_world
from training.evaluation.report import entry_labels
from training.evaluation.rollout import chunked_flight, psnr, stream_flight
from training.evaluation.suite import TORCH_DTYPES, save_recording, suite_magnitudes
from training.evaluation.vae_roundtrip import roundtrip

LONG_SECONDS, WINDOW_SECONDS, EDGE_SECONDS, TURN_DEGREES = 60.0, 6.0, 10.0, 90.0
BEAT_SECONDS = 0.5  # one beat of ROUND (one interval at 8 fps)
SCENE_BASE = 9_000_000  # scene seeds as training.evaluation.sources.rendered_first_frames: far from training's
# (held actions, beats): each action alone, a forward and a back turn that cancel, a hover. 12 beats = 6 s.
ROUND = ((("Forward",), 1), (("Back",), 1), (("Left",), 1), (("Right",), 1), (("Yaw Left",), 1), (("Yaw Right",), 1),
         (("Pitch Up",), 1), (("Pitch Down",), 1), (("Forward", "Yaw Left"), 1), (("Back", "Yaw Right"), 1), ((), 2))


# ---------------------------------------------------------------------------------------------------- scripts
def _hold(actions: np.ndarray, step: int, names, magnitudes) -> None:
    for name in names:
        index = ACTION_NAMES.index(name)
        actions[step, :, index] = (1.0, magnitudes[index])


def beat_steps(fps: float) -> int:
    """Intervals per beat of ROUND at ``fps`` (at least one)."""
    return max(1, round(BEAT_SECONDS * fps / FRAMES_PER_LATENT))


def flight_script(steps: int, magnitudes: np.ndarray, beat: int = 1, key=0) -> np.ndarray:
    """``(steps, 2, 8)`` float32: rounds of ROUND, each in its own order drawn from ``key``, each segment held for
    its beats x ``beat`` intervals, cut at ``steps``."""
    rng, held = np.random.default_rng(key), []
    while len(held) < steps:
        for index in rng.permutation(len(ROUND)):
            names, beats = ROUND[index]
            held += [names] * (beats * beat)
    actions = np.zeros((steps, 2, NUM_ACTIONS), dtype=np.float32)
    for step, names in enumerate(held[:steps]):
        _hold(actions, step, names, magnitudes)
    return actions


def out_and_back_scripts(magnitudes: np.ndarray, turn_degrees: float = TURN_DEGREES) -> dict[str, np.ndarray]:
    """``{"yaw": ..., "forward": ...}`` (2k, 2, 8) float32: k intervals of Yaw Right at turn_degrees / k (k the
    whole number of intervals nearest to the world's Yaw Right magnitude) then k of Yaw Left at the same; k of
    Forward then k of Back at the world's Forward magnitude. Both end at the start pose."""
    k = max(1, round(turn_degrees / float(magnitudes[ACTION_NAMES.index("Yaw Right")])))
    turn, move = np.full(NUM_ACTIONS, turn_degrees / k), np.full(NUM_ACTIONS, magnitudes[ACTION_NAMES.index("Forward")])
    scripts = {}
    for name, (out, back), amount in (("yaw", ("Yaw Right", "Yaw Left"), turn), ("forward", ("Forward", "Back"), move)):
        actions = np.zeros((2 * k, 2, NUM_ACTIONS), dtype=np.float32)
        for step in range(2 * k):
            _hold(actions, step, (out if step < k else back,), amount)
        scripts[name] = actions
    return scripts


# ------------------------------------------------------------------------------------------------- durations
def steps_of(seconds: float, fps: float, flag: str) -> int:
    """Whole intervals (4 frames) in ``seconds`` at ``fps``; ValueError naming ``flag`` otherwise."""
    steps = seconds * fps / FRAMES_PER_LATENT
    if not np.isfinite(steps) or steps < 1 or abs(steps - round(steps)) > 1e-6:
        raise ValueError(f"{flag}: {seconds} s at {fps} fps is {steps:g} intervals of {FRAMES_PER_LATENT} frames; "
                         "give a duration of a whole number (>= 1) of intervals")
    return int(round(steps))


# ----------------------------------------------------------------------------------------------------- worlds
@dataclasses.dataclass
class World:
    label: str
    folder: str
    serve: ServeConfig

    @property
    def generation(self) -> str:
        return self.serve.generation


def load_worlds(args) -> list[World]:
    """Each ``--world``'s serve.json (``ServeConfig()`` defaults without one) with the CLI's overrides, checked."""
    worlds = []
    labels = entry_labels(args.labels, [Path(folder).resolve().name for folder in args.world])
    for folder, label in zip(args.world, labels):
        if not Path(folder).is_dir():
            raise ValueError(f"--world {folder}: not a folder")
        serve = load_serve_config(folder) or ServeConfig()
        overrides = {name: getattr(args, name) for name in ("steps", "action_guidance", "action_guidance_rescale")
                     if getattr(args, name) is not None}
        serve = dataclasses.replace(serve, **overrides)  # re-validated by ServeConfig
        flight_lengths(args, serve.fps)
        worlds.append(World(label, folder, serve))
    return worlds


def generate_flight(pipe, serve: ServeConfig, first: np.ndarray, prompt: str, actions: np.ndarray,
                    seed: int) -> np.ndarray:
    """The world's video ``(4T+1, H, W, 3)`` uint8 of ``actions`` (T, 2, 8) from ``first``, made as it is served
    (a causal world's last block is filled up with hovering when T is not a whole number of blocks; the frames of
    the filling are dropped)."""
    if serve.generation == "causal":
        return stream_flight(pipe, serve, first, prompt, actions, seed)[0]
    guidance = dict(action_guidance=serve.action_guidance, action_guidance_rescale=serve.action_guidance_rescale)
    chunks = list(chunked_flight(pipe, first, prompt, actions, serve.chunk_frames, serve.steps, seed,
                                 serve.cfg_scale, **guidance))  # each (4k+1, H, W, 3), starting at the last frame
    return np.concatenate([chunks[0]] + [chunk[1:] for chunk in chunks[1:]])


def vae_ceiling(pipe, serve: ServeConfig, frames: np.ndarray) -> np.ndarray:
    """The true video ``(4T+1, H, W, 3)`` uint8 through the world's VAE, decoded as the world decodes its own latents:
    a chunked world every chunk on its own (from the previous chunk's last frame), a causal world the whole flight
    in one encode and one decode that never restarts (``models.streaming.StreamDecoder`` equals one decode)."""
    if serve.generation == "causal":
        return roundtrip(pipe.vae, frames)
    k = num_actions_for_frames(serve.chunk_frames)
    parts = [roundtrip(pipe.vae, frames[FRAMES_PER_LATENT * s:FRAMES_PER_LATENT * (s + k) + 1])
             for s in range(0, (len(frames) - 1) // FRAMES_PER_LATENT, k)]
    return np.concatenate([parts[0]] + [part[1:] for part in parts[1:]])


def scene_truth(scene_seed: int, scripts: dict[str, np.ndarray], height: int, width: int) -> dict:
    """One held-out world for all ``scripts`` (its objects kept off every path) flown from its start pose:
    ``{prompt, flights: {name: {actions (flown, pitch-clamped), frames (4T+1, H, W, 3), max_distance}}}``."""
    start = held_out_start(scene_seed)
    flown = {name: fly(actions, start) for name, actions in scripts.items()}  # name -> (poses, actions)
    scene = make_scene(scene_seed, clear_xz=np.concatenate([poses[:, [0, 2], 3] for poses, _ in flown.values()]))
    flights = {}
    for name, (poses, actions) in flown.items():
        frames = render_flight(actions, start, scene, height, width)[0]
        away = float(np.hypot(*(poses[:, [0, 2], 3] - poses[:1, [0, 2], 3]).T).max())  # ground distance
        flights[name] = {"actions": actions.astype(np.float32), "frames": frames, "max_distance": away}
    return {"prompt": scene.prompt, "flights": flights}


# ------------------------------------------------------------------------------------------------------- runs
def mode_world(args):
    """``--world`` as the mode takes it (a list for --long_flight, else one folder or None), after checking the
    flags: --long_flight uses --world, --seconds, --window_seconds, --edge_seconds, --turn_degrees, --scenes,
    --seed, --labels, --steps, --action_guidance(_rescale), --device, --torch_dtype, --focal and --flow_stride;
    other modes' inputs are refused by name there, and its own options in the other modes."""
    if not args.long_flight:
        for flag in ("seconds", "window_seconds", "edge_seconds", "turn_degrees"):
            if getattr(args, flag) is not None:
                raise ValueError(f"--{flag} is a --long_flight option")
        if args.world and len(args.world) > 1:
            raise ValueError("--world: --generate takes one world")
        return args.world[0] if args.world else None
    if not args.world:
        raise ValueError("--long_flight needs --world DIR [DIR ...]")
    for flag in ("preset", "model_dir", "artifacts", "images", "flights", "num_frames", "height", "width",
                 "max_clips", "cfg_scale", "prompt", "through_vae", "base_path"):
        if getattr(args, flag) is not None:
            raise ValueError(f"--{flag} is not a --long_flight option (the worlds' serve.json sets the size)")
    for flag in ("shuffled", "with_random"):
        if getattr(args, flag):
            raise ValueError(f"--{flag} is not a --long_flight option")
    for flag, value in (("seconds", args.seconds), ("window_seconds", args.window_seconds),
                        ("edge_seconds", args.edge_seconds), ("turn_degrees", args.turn_degrees)):
        if value is not None and not (np.isfinite(value) and value > 0):
            raise ValueError(f"--{flag} must be a positive number, got {value}")
    if args.scenes < 1:
        raise ValueError(f"--scenes must be >= 1, got {args.scenes}")
    return list(args.world)


def flight_lengths(args, fps: float) -> tuple[int, int, int]:
    """(flight, window, edge) intervals at ``fps``; ValueError naming the flag."""
    seconds = args.seconds or LONG_SECONDS
    steps = steps_of(seconds, fps, "--seconds")
    window = steps_of(args.window_seconds or WINDOW_SECONDS, fps, "--window_seconds")
    if window > steps:
        raise ValueError(f"--window_seconds: a window ({window} intervals) longer than the flight ({steps})")
    if args.edge_seconds is None:  # default: 10 s, at most half the flight
        edge = max(1, int(min(EDGE_SECONDS, seconds / 2) * fps / FRAMES_PER_LATENT))
    else:
        edge = steps_of(args.edge_seconds, fps, "--edge_seconds")
    if 2 * edge > steps:
        raise ValueError(f"--edge_seconds: {args.edge_seconds} s is more than half the {seconds} s flight")
    return steps, window, edge


def fly_scene(pipe, world: World, magnitudes, args, settings, index: int, truths: dict, keep: dict) -> dict:
    """One scene of a world: its long flight and out-and-back flights, generated and true, measured."""
    serve, seed = world.serve, args.seed
    steps = flight_lengths(args, serve.fps)[0]
    scene_seed = SCENE_BASE + 1000 * seed + index
    scripts = {"long": flight_script(steps, magnitudes, beat_steps(serve.fps), key=[seed, index]),
               **out_and_back_scripts(magnitudes, args.turn_degrees or TURN_DEGREES)}
    key = (scene_seed, serve.height, serve.width, b"".join(a.tobytes() for a in scripts.values()))
    if key not in truths:  # worlds with the same size, fps and magnitudes share the truth and its flow
        truths[key] = truth = scene_truth(scene_seed, scripts, serve.height, serve.width)
        truth["motion"] = estimate_motion(truth["flights"]["long"]["frames"], settings)
    truth = truths[key]
    flights, first = truth["flights"], truth["flights"]["long"]["frames"][0]
    started = time.perf_counter()
    generated = {name: generate_flight(pipe, serve, first, truth["prompt"], flight["actions"], seed)
                 for name, flight in flights.items()}
    keep["seconds"] = keep.get("seconds", 0.0) + time.perf_counter() - started
    motion = estimate_motion(generated["long"], settings)
    out_and_back = {}
    for name in ("yaw", "forward"):
        k = len(flights[name]["actions"]) // 2
        out_and_back[name] = {side: {"return_psnr_db": psnr(video[-1], video[0]),
                                     "far_psnr_db": psnr(video[FRAMES_PER_LATENT * k], video[0])}
                              for side, video in (("generated", generated[name]), ("truth", flights[name]["frames"]))}
    if args.out:
        for name, video in generated.items():
            stem = Path(args.out) / "videos" / world.label / f"scene{index}__{name}"
            save_recording(stem, video, flights[name]["actions"], truth["prompt"], serve.fps)
            save_recording(stem.parent / "truth" / stem.name, flights[name]["frames"], flights[name]["actions"],
                           truth["prompt"], serve.fps)
    if index == 0:
        keep["frames"], keep["truth"] = generated["long"], flights["long"]["frames"]
    return {"name": f"scene{index}", "prompt": truth["prompt"], "max_distance": flights["long"]["max_distance"],
            "commanded": flights["long"]["actions"], "motion": motion, "estimated": motion_to_actions(motion, settings),
            "truth_estimated": motion_to_actions(truth["motion"], settings),
            "measures": frame_measures(generated["long"], flights["long"]["frames"]), "out_and_back": out_and_back,
            "vae_measures": frame_measures(vae_ceiling(pipe, serve, flights["long"]["frames"]),
                                           flights["long"]["frames"]),
            "out_and_back_intervals": {name: len(flights[name]["actions"]) for name in ("yaw", "forward")}}


def run_long_flight(args, settings, device: str | None = None) -> tuple[list[dict], dict]:
    """Every world's entry (``summarise_world``) and, for the report's pictures, scene 0's generated and true long
    flights per world ``{label: {frames, truth, seconds}}``."""
    import torch

    worlds = load_worlds(args)
    for world in worlds:  # every size check before the first model is built
        flight_lengths(args, world.serve.fps)
    device = device or args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = TORCH_DTYPES[args.torch_dtype or "float32"]
    entries, pictures, truths = [], {}, {}
    for world in worlds:
        pipe = build_pipeline(world=world.folder, device=device, torch_dtype=dtype)
        if pipe.action_controller is None:
            raise ValueError(f"--world {world.folder}: the world has no controller")
        pipe.use_decoder(getattr(args, "decoder", None) or world.serve.decoder)  # as served; ValueError: no small one
        magnitudes = suite_magnitudes(pipe.action_stats)
        keep = pictures[world.label] = {}
        scenes = []
        for index in range(args.scenes):
            scenes.append(fly_scene(pipe, world, magnitudes, args, settings, index, truths, keep))
            print(f"{world.label}: scene {index} flown ({keep['seconds']:.0f} s of generation so far)",
                  file=sys.stderr)
        steps, window, edge = flight_lengths(args, world.serve.fps)
        info = {"label": world.label, "world": world.folder, "generation": world.generation,
                "serve": world.serve.to_dict(), "magnitudes": {n: rounded(m) for n, m in zip(ACTION_NAMES,
                                                                                                 magnitudes)}}
        entry = summarise_world(info, scenes, steps, window, edge, world.serve.fps)
        video_seconds = sum(len(s["commanded"]) + sum(s["out_and_back_intervals"].values())
                            for s in scenes) * FRAMES_PER_LATENT / world.serve.fps
        entry["generation_seconds_per_video_second"] = rounded(keep["seconds"] / video_seconds, 3)
        entries.append(entry)
        del pipe  # one world's model at a time
    return entries, pictures
