"""REST: ``POST /generate`` -> 202 job, ``GET /jobs/{id}``, ``GET /jobs/{id}/video``, recordings (listing, download).

The body is JSON (a multipart upload, ``curl -F``, is 415 saying so: the image goes in as a data URL). Actions are
raw ``(T, 2, 8)`` arrays or the text form of ``python -m server.generate`` (``"forward:4,forward+yaw_left=0.5:4"``,
``server.inputs.parse_action_spec``, a fraction of a held key scaled by the world's full_scale).
Validation errors are 422 in FastAPI's shape (``{"detail": [{"loc": ["body", field], "msg": ...}]}``) naming the
field; a full job queue is 429 with ``Retry-After``. JSON bodies are typed strictly, as the WebSocket's messages: no
coercion (``"9"`` is not 9, ``true`` is not 1; a number field takes an integer). Jobs run on the engine's worker,
alternating with flight chunks; a causal world makes a job through one stream, one block per turn, up to
``--max_job_frames`` (its num_frames must be whole blocks: 4 * block_frames * n + 1, else 422 naming num_frames).
"""
from __future__ import annotations

import json
import math
from typing import Optional, Union

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from models.action_format import num_actions_for_frames, parse_actions
from models.media import fit_image
from server.generation.engine import EngineFull
from server.generation.generators import GenRequest, check_video_steps
from server.inputs import parse_action_spec
from server.media.images import decode_data_url, load_sample
from server.media.recording import list_recordings
from server.protocol import MAX_SEED, Text

router = APIRouter()


class GenerateBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    prompt: Text = Field(description="text prompt")
    image: Optional[str] = Field(None, description="first frame as a data URL (PNG/JPEG/WebP); null = a bundled sample")
    sample: Optional[str] = Field(None, description="bundled sample name when image is null")
    actions: Optional[Union[list, str]] = Field(
        None, description='T = (num_frames - 1) // 4 steps: raw actions (T, 2, 8), or text such as '
                          '"forward:2,forward+yaw_left=0.5:2" (names joined by +, =fraction of a held key, '
                          'hover; see /api/config for names and full_scale); null = hover')
    num_frames: int = Field(17, description="4k+1 frames")
    steps: Optional[int] = Field(None, description="denoising steps (default: the world's)")
    seed: int = Field(0, ge=0, le=MAX_SEED)
    cfg: Optional[float] = Field(None, description="classifier-free guidance scale (default: the world's)")


class AsciiJSONResponse(JSONResponse):
    """JSON with non-ASCII characters escaped: a 422 that echoes a client's lone surrogate still encodes."""

    def render(self, content) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


async def validation_error(request: Request, error: RequestValidationError) -> AsciiJSONResponse:
    """FastAPI's 422 for a body that fails its model, as FastAPI shapes it (``app.py`` installs it)."""
    return AsciiJSONResponse({"detail": jsonable_encoder(error.errors())}, status_code=422)


def invalid(field: str, message: str) -> HTTPException:
    return HTTPException(422, detail=[{"loc": ["body", field], "msg": message, "type": "value_error"}])


def json_only(request: Request) -> None:
    """415 for a body that is not JSON (a multipart form from ``curl -F``), before FastAPI tries to read it."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind and kind != "application/json" and not kind.endswith("+json"):
        raise HTTPException(415, detail=f"the body must be JSON (Content-Type: application/json), got {kind}; send "
                                        "the first frame as a data URL in \"image\" (see server/README.md)")


def state_of(request: Request):
    state = request.app.state.wanfly
    if not state.ready:
        raise HTTPException(503, detail="the model is still loading; see /readyz")
    return state


def build_request(body: GenerateBody, state) -> GenRequest:
    """Validate a /generate body against the world and the limits; HTTPException 422 naming the field."""
    settings, world = state.settings, state.world
    if len(body.prompt) > settings.max_prompt_chars:
        raise invalid("prompt", f"{len(body.prompt)} characters, more than {settings.max_prompt_chars}")
    max_frames = job_frames_limit(settings, world)
    try:
        steps_needed = num_actions_for_frames(body.num_frames)
        check_video_steps(world, steps_needed, "num_frames")
    except ValueError as error:
        raise invalid("num_frames", str(error)) from None
    if not 5 <= body.num_frames <= max_frames:
        raise invalid("num_frames", f"must be in 5..{max_frames}, got {body.num_frames}")
    steps = world.steps if body.steps is None else body.steps
    if not 1 <= steps <= settings.max_steps:
        raise invalid("steps", f"must be in 1..{settings.max_steps}, got {steps}")
    cfg = world.cfg_scale if body.cfg is None else body.cfg
    if not math.isfinite(cfg) or not 1.0 <= cfg <= 20.0:
        raise invalid("cfg", f"must be a finite number in 1..20, got {cfg}")
    actions = None
    if body.actions is not None:
        try:
            if isinstance(body.actions, str):
                raw = parse_actions(parse_action_spec(body.actions, world.full_scale))[0]  # (T, 2, 8)
            else:
                raw = parse_actions(body.actions)[0]  # (T, 2, 8)
        except ValueError as error:
            raise invalid("actions", str(error)) from None
        if raw.shape[0] != steps_needed:
            raise invalid("actions", f"{raw.shape[0]} steps given, num_frames={body.num_frames} needs {steps_needed}")
        actions = raw.numpy().astype(np.float64)
    try:
        if body.image is not None:
            image = decode_data_url(body.image, settings.max_upload_bytes, settings.max_image_pixels)
        else:
            image = load_sample(settings.web_dir, body.sample or world.sample)
    except ValueError as error:
        field = "sample" if str(error).startswith("sample") else "image"
        raise invalid(field, str(error)) from None
    return GenRequest(prompt=body.prompt, image=fit_image(image, world.width, world.height), actions=actions,
                      num_frames=body.num_frames, steps=steps, seed=body.seed, cfg_scale=cfg)


def job_frames_limit(settings, world) -> int:
    """The longest job: ``--max_job_frames``, and for chunked worlds what one generation can make."""
    return settings.max_job_frames if world.max_frames is None else min(settings.max_job_frames, world.max_frames)


def job_view(job, state) -> dict:
    view = {"id": job.id, "status": job.status, "progress": round(job.progress, 4),
            "position": state.engine.job_position(job), "num_frames": job.request.num_frames, "frames": job.frames,
            "error": job.error, "status_url": f"/jobs/{job.id}", "video_url": None}
    if job.status == "done":
        view["video_url"] = f"/jobs/{job.id}/video"
    return view


@router.post("/generate", status_code=202, tags=["jobs"],
             responses={415: {"description": "not JSON"}, 422: {"description": "invalid field"},
                        429: {"description": "job queue full"}}, dependencies=[Depends(json_only)])
def generate(body: GenerateBody, request: Request):
    """Queue an offline generation; returns 202 with the job id. Poll ``/jobs/{id}``, then fetch the video."""
    state = state_of(request)
    gen_request = build_request(body, state)
    try:
        job = state.engine.submit_job(gen_request)
    except EngineFull as full:
        return JSONResponse({"detail": str(full)}, status_code=429, headers={"Retry-After": "5"})
    return JSONResponse(job_view(job, state), status_code=202, headers={"Location": f"/jobs/{job.id}"})


@router.get("/jobs/{job_id}", tags=["jobs"])
def job_status(job_id: str, request: Request):
    state = state_of(request)
    job = state.engine.get_job(job_id)
    if job is None:
        raise HTTPException(404, detail=f"no job {job_id!r} (unknown or expired)")
    return job_view(job, state)


@router.get("/jobs/{job_id}/video", tags=["jobs"], response_class=FileResponse)
def job_video(job_id: str, request: Request):
    """The job's H.264 mp4 (409 while it is not done)."""
    state = state_of(request)
    job = state.engine.get_job(job_id)
    if job is None:
        raise HTTPException(404, detail=f"no job {job_id!r} (unknown or expired)")
    if job.status != "done":
        raise HTTPException(409, detail=f"job {job_id} is {job.status}" + (f": {job.error}" if job.error else ""))
    path = state.engine.results.find(job.id, ".mp4")
    if path is None:
        raise HTTPException(404, detail=f"the video of job {job_id} has expired")
    return FileResponse(path, media_type="video/mp4", filename=f"wanfly-{job.id}.mp4")


@router.get("/recordings", tags=["recordings"])
def recordings(request: Request):
    """The finished flights on disk, newest first: ids, download URLs, frames and action steps, and ``cut_off``
    (true: the server was killed during the flight; frames and steps were cut to the last whole step both held)."""
    return {"recordings": list_recordings(request.app.state.wanfly.recordings)}


@router.get("/recordings/{name}", tags=["recordings"])
def recording(name: str, request: Request):
    """A finished flight: ``<id>.mp4`` (the video) or ``<id>.json`` (prompt and each chunk's raw actions)."""
    state = request.app.state.wanfly
    stem, dot, suffix = name.rpartition(".")
    if not dot or suffix not in ("mp4", "json"):
        raise HTTPException(404, detail="expected <id>.mp4 or <id>.json")
    path = state.recordings.find(stem, "." + suffix)
    if path is None or state.recordings.find(stem, ".json") is None:  # the JSON is written when the mp4 is final
        raise HTTPException(404, detail=f"no recording {name!r} (unknown, unfinished or expired)")
    media = "video/mp4" if suffix == "mp4" else "application/json"
    return FileResponse(path, media_type=media, filename=f"wanfly-flight-{name}")
