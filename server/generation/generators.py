"""Generators: the interface between the engine's scheduling and a model.

    GenRequest         one generation: prompt, first frame, raw actions ``(T, 2, 8)``, frames, steps, seed, cfg
    Generator          ``generate(GenRequest) -> (F, H, W, 3) uint8``, ``generate_parts`` (the same in parts, so
                       the engine can take turns between them), ``generate_stream`` (a chunk's groups as decoded)
                       and, for causal worlds, ``open_stream`` (a flight's ``models.stream.WorldStream``)
    PipelineGenerator  the real one, a ``WanActionPipeline``: chunked worlds make TI2V chunks from a first frame,
                       streaming the VAE decode (``models.streaming``) so a chunk's first frames are ready before the
                       whole chunk; causal worlds make every video, flight or job, through one stream, block by block
    hover_request      one chunk of the world's prompt from a grey image, all keys off (warm-up, benches)
    warm_up            one chunk (or two blocks) at start, so the first user does not pay for lazy set-up

A causal world's job of T action steps is T / block_frames blocks of one stream (1 + 4T frames, as a chunked
generation); T must be a multiple of block_frames (``check_video_steps`` refuses it by name otherwise: padding with
hover would make a video the caller did not ask for).
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import Callable, Iterator, Optional

import numpy as np
from PIL import Image

from models.action_format import NUM_ACTIONS, num_actions_for_frames
from models.media import video_to_frames
from server.generation.worlds import World


@dataclass
class GenRequest:
    prompt: str
    image: Image.Image  # the first frame, already world.width x world.height
    actions: Optional[np.ndarray]  # (T, 2, 8) raw, T = (num_frames - 1) // 4; None = no action input
    num_frames: int
    steps: int
    seed: int
    cfg_scale: float
    negative_prompt: str = ""


class Generator(ABC):
    world: World

    @abstractmethod
    def generate(self, request: GenRequest, progress: Callable[[int, int], None] = None) -> np.ndarray:
        """Frames ``(num_frames, H, W, 3)`` uint8; ``progress(step, total)`` after each denoising step."""

    def generate_stream(self, request: GenRequest, timings: dict = None) -> Iterator[np.ndarray]:
        """The same frames in order, as groups ``(n, H, W, 3)`` uint8 as soon as each is ready. Sets
        ``timings["denoised"]`` (``time.perf_counter()``) when the last denoising step is done. Default: one group."""
        frames = self.generate(request)
        if timings is not None:
            timings["denoised"] = time.perf_counter()
        yield frames

    def generate_parts(self, request: GenRequest, progress: Callable[[int, int], None] = None) -> Iterator[np.ndarray]:
        """``generate``'s frames in consecutive parts (a causal world: one block each; default: all at once). The
        engine runs one part per turn; closing the iterator early frees what it holds."""
        yield self.generate(request, progress)

    def open_stream(self, prompt: str, image: Image.Image, seed: int, steps: int):
        """A causal world's flight: a ``models.stream.WorldStream`` (``step_iter(actions (b, 2, 8))`` -> frame
        groups, ``close()``). Chunked worlds have none."""
        raise ValueError(f"generation: the world {self.world.name!r} is chunked; it has no streams")


class PipelineGenerator(Generator):
    def __init__(self, world: World, decode_group: int = 1):
        self.world = world
        self.decode_group = decode_group  # latent frames per streamed group (4 video frames each)

    def _pipe_kwargs(self, request: GenRequest, progress=None) -> dict:
        import torch

        def steps(timesteps):
            total = len(timesteps)
            for i, timestep in enumerate(timesteps):
                yield timestep
                if progress is not None:
                    progress(i + 1, total)

        world = self.world
        actions = None
        if request.actions is not None and world.controller:
            actions = torch.as_tensor(np.asarray(request.actions), dtype=torch.float32)  # (T, 2, 8)
        return dict(prompt=request.prompt, negative_prompt=request.negative_prompt, input_image=request.image,
                    actions=actions, height=world.height, width=world.width, num_frames=request.num_frames,
                    num_inference_steps=request.steps, seed=request.seed, cfg_scale=request.cfg_scale,
                    action_guidance=world.action_guidance if actions is not None else 1.0,
                    action_guidance_rescale=world.action_guidance_rescale if actions is not None else 0.0,
                    tiled=world.tiled,
                    output_type="floatpoint", progress_bar_cmd=steps)

    def open_stream(self, prompt: str, image: Image.Image, seed: int, steps: int):
        world, causal = self.world, self.world.causal_settings
        return world.pipe.open_stream(image, prompt, seed=seed, steps=steps, block_frames=causal.block_frames,
                                      window=causal.window, sink=causal.sink, height=world.height, width=world.width,
                                      action_guidance=world.action_guidance,
                                      action_guidance_rescale=world.action_guidance_rescale, tiled=world.tiled,
                                      keep_latents=False,  # nothing grows with the flight
                                      overlap=world.decode_overlap)  # step_async: the decode on the stream's lane

    def generate_parts(self, request: GenRequest, progress=None) -> Iterator[np.ndarray]:
        if not self.world.causal:
            yield self.generate(request, progress)
            return
        steps = num_actions_for_frames(request.num_frames)
        check_video_steps(self.world, steps, "num_frames")
        b = self.world.causal_settings.block_frames
        actions = np.zeros((steps, 2, NUM_ACTIONS)) if request.actions is None else np.asarray(request.actions)
        stream = self.open_stream(request.prompt, request.image, request.seed, request.steps)
        try:
            for block in range(steps // b):
                yield stream.step(actions[block * b:(block + 1) * b])  # (1 + 4b | 4b, H, W, 3)
                if progress is not None:
                    progress(block + 1, steps // b)
        finally:  # also when the caller stops early (GeneratorExit) or a block fails
            stream.close()

    def generate(self, request: GenRequest, progress=None) -> np.ndarray:
        if self.world.causal:
            return np.concatenate(list(self.generate_parts(request, progress)))  # (1 + 4T, H, W, 3)
        chunk_steps = num_actions_for_frames(self.world.chunk_frames)
        total_steps = num_actions_for_frames(request.num_frames)
        if not self.world.autoregressive or total_steps <= chunk_steps:
            video = self.world.pipe(**self._pipe_kwargs(request, progress))  # (1, 3, F, H, W)
            return video_to_frames(video)
        # A world trained on chunk-length clips makes a long video as a flight does: chunk after chunk, each from the
        # previous chunk's last frame, dropping that repeated frame.
        starts = range(0, total_steps, chunk_steps)
        parts, image = [], request.image
        for number, start in enumerate(starts):
            steps = min(chunk_steps, total_steps - start)
            part_progress = None if progress is None else \
                (lambda i, n, k=number: progress(k * n + i, n * len(starts)))
            part = replace(request, image=image, num_frames=4 * steps + 1, seed=request.seed + number,
                           actions=None if request.actions is None else request.actions[start:start + steps])
            frames = video_to_frames(self.world.pipe(**self._pipe_kwargs(part, part_progress)))  # (4k+1, H, W, 3)
            parts.append(frames if not parts else frames[1:])
            image = Image.fromarray(frames[-1])
        return np.concatenate(parts)  # (num_frames, H, W, 3)

    def generate_stream(self, request: GenRequest, timings: dict = None) -> Iterator[np.ndarray]:
        pipe = self.world.pipe
        latents = pipe.generate_latents(**self._pipe_kwargs(request))  # (1, 48, F_lat, h, w)
        if timings is not None:
            timings["denoised"] = time.perf_counter()
        for video in pipe.stream_decode(latents, tiled=self.world.tiled, group=self.decode_group):
            yield video_to_frames(video)  # (n, H, W, 3)


def check_video_steps(world: World, steps: int, field: str) -> None:
    """A causal world makes videos of whole blocks: ``steps`` action steps must be a multiple of its block_frames
    (ValueError naming ``field``)."""
    b = world.causal_settings.block_frames
    if world.causal and steps % b:
        raise ValueError(f"{field}: this causal world makes blocks of {b} action steps ({4 * b} frames); {steps} "
                         f"steps is not a multiple of {b} (videos have 4 * {b} * n + 1 frames)")


def hover_request(world: World, steps: int) -> GenRequest:
    """One chunk of ``world``: its prompt, a grey first image, every key off, ``steps`` denoising steps."""
    image = Image.new("RGB", (world.width, world.height), (128, 128, 128))
    actions = np.zeros((num_actions_for_frames(world.chunk_frames), 2, NUM_ACTIONS), np.float32)
    return GenRequest(prompt=world.prompt, image=image, actions=actions, num_frames=world.chunk_frames, steps=steps,
                      seed=0, cfg_scale=world.cfg_scale)


def warm_up(generator: Generator) -> float:
    """One chunk-sized generation, through the flight path (streaming decode), or two blocks of a stream for a
    causal world, so the first flight does not pay for lazy initialisation (kernels, caches, torch.compile); once
    per world. Returns the seconds it took (0 if the world was already warm)."""
    world = generator.world
    if getattr(world, "warm", False):
        return 0.0
    started = time.perf_counter()
    if world.causal:
        image = Image.new("RGB", (world.width, world.height), (128, 128, 128))
        stream = generator.open_stream(world.prompt, image, 0, world.steps)
        try:
            for _ in range(2):  # the first block also decodes the first image; the second is a plain one
                stream.step(np.zeros((world.causal_settings.block_frames, 2, NUM_ACTIONS)))
        finally:
            stream.close()
        world.warm = True
        return time.perf_counter() - started
    for _ in generator.generate_stream(hover_request(world, steps=1)):
        pass
    world.warm = True
    return time.perf_counter() - started
