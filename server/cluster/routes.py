"""The replica side of the cluster: routes matched before the app's own (``create_app(routes=...)``), an ASGI wrapper
and the reporter thread. The board (``server.cluster.board``) is reached through ``BoardClient``.

    GET /readyz          this replica's readiness plus ``cluster``: replicas serving against the target
                         (``degraded`` when fewer), each one's flights, the capacity serving
    GET /metrics         every serving replica's metrics labelled ``replica``, then cluster-wide totals
    POST /generate       the app's own; the new job is on the board before the 202 leaves
    GET /jobs/{id}, /jobs/{id}/video, /recordings/{name}
                         this replica's when it has them, else the board's: any ingress serves any result
    ReplicaWrapper       ASGI: a flight's ``recording`` message leaves once its files are on the board; every HTTP
                         response says which replica answered (``X-Wanfly-Replica``)
    Reporter             a thread: every ``REPORT_S`` the replica's flights, capacity and metrics and its jobs'
                         views to the board; a job's video once it is done
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
from typing import Callable, Optional

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from server import api
from server.api import GenerateBody, job_view
from server.cluster.board import REPORT_S, cluster_view, merge_metrics
from server.generation.worlds import world_summary

log = logging.getLogger("wanfly.cluster")
REPLICA_HEADER = b"x-wanfly-replica"
MEDIA = {"mp4": "video/mp4", "json": "application/json"}


class BoardClient:
    """The board as a replica calls it: a Serve deployment handle, or a ``Board`` in this process (tests)."""

    def __init__(self, board):
        self.board = board

    async def call(self, name: str, *args):
        method = getattr(self.board, name)
        return await method.remote(*args) if hasattr(method, "remote") else method(*args)

    def call_sync(self, name: str, *args, timeout_s: float = 10.0):
        """From a thread that is not an event loop's (the reporter)."""
        method = getattr(self.board, name)
        return method.remote(*args).result(timeout_s=timeout_s) if hasattr(method, "remote") else method(*args)


def attachment(data: bytes, media_type: str, filename: str) -> Response:
    return Response(data, media_type=media_type, headers={"Content-Disposition": f'attachment; filename="{filename}"'})


def cluster_routes(board: BoardClient, target: int, jobs: set,
                   replica_states: Optional[Callable[[], dict]] = None) -> APIRouter:
    """``target``: the replicas the deployment should have; ``jobs``: the ids of this replica's jobs, which the
    reporter follows until they end; ``replica_states``: Serve's count of the replicas by state (blocking)."""
    router = APIRouter(include_in_schema=False)  # the app's own routes document the shapes

    async def serving(state) -> list[dict]:
        try:
            return await board.call("serving")
        except Exception as error:  # the board is restarting: this replica's own numbers at least
            log.warning("the board did not answer: %s", error)
            return [dict(replica_info(state), replica=state.replica, metrics=state.metrics.render())]

    @router.get("/readyz")
    async def readyz(request: Request):
        state = request.app.state.wanfly
        states = None
        if replica_states is not None:
            try:
                states = await asyncio.to_thread(replica_states)
            except Exception as error:
                log.warning("Serve's status did not answer: %s", error)
        body = {"ready": state.ready, "error": state.load_error, "world": world_summary(state.world),
                "replica": state.replica, "cluster": cluster_view(await serving(state), target, states)}
        return JSONResponse(body, status_code=200 if state.ready else 503)

    @router.get("/metrics")
    async def metrics(request: Request):
        text = merge_metrics(await serving(request.app.state.wanfly), target)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    @router.post("/generate", status_code=202)
    async def generate(body: GenerateBody, request: Request):
        response = await run_in_threadpool(api.generate, body, request)
        if response.status_code == 202:
            view = json.loads(response.body)
            jobs.add(view["id"])
            await board.call("put_job", request.app.state.wanfly.replica, view)
        return response

    @router.get("/jobs/{job_id}")
    async def job_status(job_id: str, request: Request):
        state = api.state_of(request)
        job = state.engine.get_job(job_id)
        if job is not None:
            if job.status in ("done", "failed") and job_id in jobs:  # on the board before a client sees it end
                await asyncio.to_thread(publish_job, state, board, jobs, job)
            return job_view(job, state)
        view = await board.call("job", job_id)
        if view is None:
            raise HTTPException(404, detail=f"no job {job_id!r} (unknown or expired)")
        return view

    @router.get("/jobs/{job_id}/video")
    async def job_video(job_id: str, request: Request):
        state = api.state_of(request)
        if state.engine.get_job(job_id) is not None:
            return await run_in_threadpool(api.job_video, job_id, request)
        view = await board.call("job", job_id)
        if view is None:
            raise HTTPException(404, detail=f"no job {job_id!r} (unknown or expired)")
        if view["status"] != "done":
            raise HTTPException(409, detail=f"job {job_id} is {view['status']}" +
                                (f": {view['error']}" if view.get("error") else ""))
        data = await board.call("job_video", job_id)
        if data is None:
            raise HTTPException(404, detail=f"the video of job {job_id} has expired")
        return attachment(data, MEDIA["mp4"], f"wanfly-{job_id}.mp4")

    @router.get("/recordings/{name}")
    async def recording(name: str, request: Request):
        state = request.app.state.wanfly
        stem, dot, suffix = name.rpartition(".")
        if dot and suffix in MEDIA and state.recordings.find(stem, ".json") is None:  # not made here
            data = await board.call("recording", stem, "." + suffix)
            if data is not None:
                return attachment(data, MEDIA[suffix], f"wanfly-flight-{name}")
        return api.recording(name, request)  # this replica's, or its 404 naming the problem

    return router


class ReplicaWrapper:
    """Pure ASGI around the app: tags HTTP responses with the replica; publishes a flight's recording before its
    ``recording`` message reaches the client, so the links in it work from any ingress at once."""

    def __init__(self, app, state, board: BoardClient):
        self.app, self.state, self.board = app, state, board

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            async def tagged(message):
                if message["type"] == "http.response.start":
                    header = (REPLICA_HEADER, (self.state.replica or "").encode())
                    message = {**message, "headers": [*message.get("headers", []), header]}
                await send(message)
            return await self.app(scope, receive, tagged)
        if scope["type"] == "websocket":
            async def published(message):
                if message["type"] == "websocket.send" and '"recording"' in (message.get("text") or ""):
                    await self.publish(json.loads(message["text"]))
                await send(message)
            return await self.app(scope, receive, published)
        return await self.app(scope, receive, send)

    async def publish(self, message: dict) -> None:
        if message.get("type") != "recording" or not message.get("id"):
            return
        try:
            files = await asyncio.to_thread(read_recording, self.state.recordings, message["id"])
            if files is not None:
                await self.board.call("put_recording", message["id"], *files)
        except Exception:  # the flight's own replica still serves it
            log.exception("publishing recording %s failed", message["id"])


def replica_info(state) -> dict:
    """What a replica reports: its process, its flights and jobs, what it admits."""
    stats = state.engine.stats() if state.ready else {"active": 0, "waiting": 0, "jobs_queued": 0}
    return {"pid": os.getpid(), "host": socket.gethostname(), **stats,
            "max_sessions": state.engine.max_sessions if state.ready else 0, "max_waiting": state.settings.max_waiting}


def read_recording(store, recording_id: str):
    """(mp4 bytes, JSON bytes) of a finished recording, or None."""
    video, actions = store.find(recording_id, ".mp4"), store.find(recording_id, ".json")
    if video is None or actions is None:
        return None
    return video.read_bytes(), actions.read_bytes()


class Reporter:
    """Every ``period`` seconds: this replica's info, metrics and running jobs to the board; finished jobs (with
    their video) once."""

    def __init__(self, state, board: BoardClient, jobs: set, period: float = REPORT_S):
        self.state, self.board, self.jobs, self.period = state, board, jobs, period
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="wanfly-reporter", daemon=True)

    def start(self) -> "Reporter":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()

    def _run(self) -> None:
        while True:
            try:
                self.report()
            except Exception as error:  # the board restarting, a slow call: the next report catches up
                log.warning("report to the board failed: %s", error)
            if self.stopped.wait(self.period):
                return

    def report(self) -> None:
        state = self.state
        if not state.ready:
            return
        running, finished = [], []
        for job_id in list(self.jobs):
            job = state.engine.get_job(job_id)
            if job is None:  # expired
                self.jobs.discard(job_id)
            elif job.status in ("done", "failed"):
                finished.append(job)
            else:
                running.append(job_view(job, state))
        self.board.call_sync("report", state.replica, replica_info(state), state.metrics.render(), running)
        for job in finished:
            publish_job(state, self.board, self.jobs, job)


def publish_job(state, board: BoardClient, jobs: set, job) -> None:
    """A finished job's view and video to the board, once (the reporter, or ``GET /jobs/{id}`` on its replica when
    it answers first: a client told ``done`` by any replica can download from any)."""
    path = state.engine.results.find(job.id, ".mp4") if job.status == "done" else None
    video = path.read_bytes() if path is not None else None
    board.call_sync("put_job", state.replica, job_view(job, state), video)
    jobs.discard(job.id)
