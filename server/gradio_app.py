"""A gradio app at ``/gradio`` for offline generation on the same worker queue as ``POST /generate``.

Image (or a bundled sample), prompt, an action timeline editor (one row per latent-frame step, one column per
action holding a fraction 0..1 of its full-scale magnitude; a text spec such as ``forward:10,yaw_left:5`` fills it),
steps, seed, a progress bar and the video. The page is built when the app is, before the world has loaded, so the
world's defaults (prompt, steps, sample) are filled in when a browser loads the page (``world_defaults``).
``/gradio`` redirects to ``/gradio/``.
"""
from __future__ import annotations

import numpy as np
from fastapi import Request
from fastapi.responses import RedirectResponse

from models.action_format import ACTION_NAMES, NUM_ACTIONS, num_frames_for_actions
from models.media import fit_image
from server.api import job_frames_limit
from server.generation.engine import EngineFull
from server.generation.generators import GenRequest, check_video_steps
from server.inputs import parse_action_spec
from server.media.images import list_samples, load_sample

DEFAULT_SPEC = "forward:2,forward+yaw_left:2"


def table_to_actions(table, full_scale) -> np.ndarray:
    """Rows of 8 fractions (0 = off) -> raw ``(T, 2, 8)``. ValueError naming the bad cell."""
    rows = [list(row) for row in (table.values.tolist() if hasattr(table, "values") else table or [])]
    if not rows:
        raise ValueError("actions: the timeline is empty; add at least one row")
    raw = np.zeros((len(rows), 2, NUM_ACTIONS))
    for r, row in enumerate(rows):
        if len(row) != NUM_ACTIONS:
            raise ValueError(f"actions: row {r + 1} has {len(row)} columns, expected {NUM_ACTIONS}")
        for c, cell in enumerate(row):
            try:
                value = 0.0 if cell in (None, "") else float(cell)
            except (TypeError, ValueError):
                raise ValueError(f"actions: row {r + 1}, {ACTION_NAMES[c]}: {cell!r} is not a number") from None
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"actions: row {r + 1}, {ACTION_NAMES[c]}: {value} is outside 0..1")
            raw[r, 0, c] = 1.0 if value > 0 else 0.0
            raw[r, 1, c] = value * full_scale[c]
    return raw


def spec_to_table(spec: str) -> list[list[float]]:
    raw = parse_action_spec(spec, full_scale=(1.0,) * NUM_ACTIONS)  # fractions
    return [[round(float(v), 3) for v in step[1]] for step in raw]


def world_defaults(state) -> tuple:
    """(prompt, steps, sample, note) for the page's fields: the loaded world's, or a note that it is still loading."""
    world = state.world
    if world is None:
        return "", 1, None, "*The model is still loading: reload this page in a moment for the world's defaults.*"
    samples = _samples(state)
    sample = world.sample if world.sample in samples else (samples[0] if samples else None)
    note = f"**{world.weights}**" if world.random_weights else f"World: {world.weights}"
    if world.notes:
        note += f"  \nWhat to expect: {world.notes}"
    return world.prompt, world.steps, sample, note


def build_blocks(state):
    import gradio as gr

    def run(image, sample, prompt, table, steps, seed, progress=gr.Progress()):
        if not state.ready:
            raise gr.Error("the model is still loading; try again shortly")
        world, settings = state.world, state.settings
        try:
            actions = table_to_actions(table, world.full_scale)
            num_frames = num_frames_for_actions(len(actions))
            check_video_steps(world, len(actions), "actions")
            if num_frames > job_frames_limit(settings, world):
                raise ValueError(f"actions: {len(actions)} steps make {num_frames} frames, more than "
                                 f"{job_frames_limit(settings, world)}")
            first = image if image is not None else load_sample(settings.web_dir, sample or world.sample)
            request = GenRequest(prompt=prompt or "", image=fit_image(first.convert("RGB"), world.width, world.height),
                                 actions=actions, num_frames=num_frames, steps=int(steps), seed=int(seed),
                                 cfg_scale=world.cfg_scale)
            job = state.engine.submit_job(request)
        except (ValueError, EngineFull) as error:
            raise gr.Error(str(error))
        while not job.done.wait(0.1):
            position = state.engine.job_position(job)
            progress(job.progress, desc=f"queued ({position} ahead)" if position else "generating")
        if job.status != "done":
            raise gr.Error(job.error or "generation failed")
        return str(state.engine.results.path(job.id, ".mp4"))

    def fill(spec):
        try:
            return spec_to_table(spec)
        except ValueError as error:
            raise gr.Error(str(error))

    with gr.Blocks(title="wanfly offline generation") as blocks:
        gr.Markdown("## wanfly: offline generation\nThe same worker queue as `POST /generate`. Each timeline row is "
                    "one latent-frame step (4 video frames); each cell is a fraction 0..1 of the action's full-scale "
                    "magnitude (0 = off).")
        note = gr.Markdown()
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="pil", label="first frame (empty = bundled sample)")
                samples = _samples(state)
                sample = gr.Dropdown(samples, value=None, label="bundled sample")
                prompt = gr.Textbox(label="prompt")
                with gr.Row():
                    steps = gr.Slider(1, state.settings.max_steps, value=1, step=1, label="steps")
                    seed = gr.Number(value=0, precision=0, label="seed")
            with gr.Column():
                spec = gr.Textbox(value=DEFAULT_SPEC, label="timeline as text (name:steps, + joins, =fraction)")
                fill_button = gr.Button("fill the timeline from text")
                table = gr.Dataframe(value=spec_to_table(DEFAULT_SPEC), headers=list(ACTION_NAMES),
                                     datatype="number", interactive=True, label="action timeline")
                video = gr.Video(label="video")
                go = gr.Button("generate", variant="primary")
        fill_button.click(fill, inputs=spec, outputs=table)
        go.click(run, inputs=[image, sample, prompt, table, steps, seed], outputs=video)
        blocks.load(lambda: world_defaults(state), outputs=[prompt, steps, sample, note], api_name="world_defaults")
    return blocks


def _samples(state) -> list[str]:
    return list_samples(state.settings.web_dir)


def mount_gradio(app, state) -> None:
    import gradio as gr

    @app.get("/gradio", include_in_schema=False)
    def gradio_slash(request: Request):  # the mount serves /gradio/ only
        return RedirectResponse(str(request.url.replace(path=request.url.path + "/")))
    gr.mount_gradio_app(app, build_blocks(state), path="/gradio", allowed_paths=[str(state.results.folder)],
                        footer_links=[])
