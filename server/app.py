"""The FastAPI app: ``create_app(settings, world=None)``; ``app_from_env`` is the same for uvicorn's factory mode.

Routes: ``/ws`` (flight), ``/api/config``, ``POST /generate``, ``/jobs/{id}``, ``/jobs/{id}/video``,
``/recordings`` (the listing), ``/recordings/{id}.mp4|json``, ``/healthz``, ``/readyz``, ``/metrics`` (Prometheus),
``/gradio``, ``/docs`` (OpenAPI) and the web UI at ``/``. The lifespan loads the world on a background thread
(``/readyz`` answers 503 until it is loaded) unless a loaded ``world`` is passed in, then starts the engine; shutdown
stops it. At start, the recordings an earlier, killed server left unfinished are finished as cut off
(``server.media.recording``).
Security: an optional shared token (``--token``) guards the WebSocket, REST jobs, recordings, metrics and gradio
(header ``Authorization: Bearer``, ``?token=`` which also sets a cookie, or the cookie); ``server.guard`` checks
every request's ``Host`` against the allow-list (DNS rebinding) and the ``Origin`` of WebSocket handshakes and
browser REST writes.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import replace
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import parse_qs

from fastapi import APIRouter, FastAPI, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from models.action_format import ACTION_NAMES, ROTATION_UNIT, TRANSLATION_UNIT
from server.api import router as rest_router
from server.api import validation_error
from server.bindings import bindings_config
from server.generation.engine import Engine
from server.generation.generators import PipelineGenerator, warm_up
from server.generation.streams import StreamCost, block_play_s, derive_max_sessions, free_memory, measure_stream
from server.generation.worlds import World, describe_world, load_world, world_summary
from server.gradio_app import mount_gradio
from server.guard import GuardMiddleware
from server.media.images import list_samples
from server.media.recording import FileStore, recover_recordings
from server.metrics import Metrics
from server.session import CLOSE_POLICY, Connection
from server.settings import DEFAULT_MAX_SESSIONS, Settings

log = logging.getLogger("wanfly.app")
TOKEN_COOKIE = "wanfly_token"
PROTECTED_PREFIXES = ("/generate", "/jobs", "/recordings", "/metrics", "/gradio")


class AppState:
    def __init__(self, settings: Settings, world: World | None):
        self.settings, self.world = settings, world
        self.metrics = Metrics()
        self.recordings = FileStore(settings.recordings_dir, keep=settings.recordings_kept, prefix="wanfly-rec-")
        self.results = FileStore(None, keep=settings.jobs_kept, prefix="wanfly-jobs-")
        self.engine: Engine | None = None
        self.load_error: str | None = None
        self.stream_cost: StreamCost | None = None  # causal worlds: one stream's measured memory and block time
        self.replica: str | None = None  # the Ray Serve replica this app runs in (server.cluster); None: one process

    @property
    def ready(self) -> bool:
        return self.engine is not None

    def attach(self, world: World) -> None:
        self.world = world
        compiling = self.settings.compile and not getattr(world, "warm", False)
        if compiling:
            world.pipe.compile_for_inference()  # the warm-up below pays the compilation, not a user's chunk
        if not getattr(world, "warm", False):
            log.info("warming up: one generation%s", " (compiling with torch.compile: minutes)" if compiling else "")
        generator = PipelineGenerator(world)
        log.info("warm-up generation took %.2f s", warm_up(generator))
        self.settings = replace(self.settings, max_sessions=self._max_sessions(generator))
        self.engine = Engine(generator, self.settings, self.metrics, self.recordings, self.results).start()
        self.metrics.set("wanfly_ready", 1)
        log.info("ready: open %s", serving_url(self.settings))

    def _max_sessions(self, generator) -> int:
        """``--max_sessions``, or its default: 4 for chunked worlds, from one measured stream for causal ones."""
        world, given = generator.world, self.settings.max_sessions
        if not world.causal:
            return given or DEFAULT_MAX_SESSIONS
        self.stream_cost = cost = measure_stream(generator)
        self.metrics.set("wanfly_stream_bytes", cost.bytes)
        sessions, why = derive_max_sessions(cost, free_memory(world.device), block_play_s(world))
        if given:
            log.info("max_sessions %d (given); the default would be %s", given, why)
            return given
        log.info("max_sessions %s", why)
        return sessions

    def load(self) -> None:
        try:
            log.info("loading the world (%s); /readyz answers 503 until it is ready", describe_world(self.settings))
            started = time.perf_counter()
            world = load_world(self.settings)
            log.info("world loaded in %.1f s", time.perf_counter() - started)
            self.attach(world)
        except Exception as error:  # reported by /readyz and the log
            if isinstance(error, (ValueError, FileNotFoundError)):  # a bad world folder or setting: says which
                log.error("loading the world failed: %s", error)
            else:
                log.exception("loading the world failed")
            self.load_error = f"{type(error).__name__}: {error}"

    def recover(self) -> None:
        """Finish the recordings of an earlier server that was killed, then apply the retention limit to the folder."""
        if not self.recordings.temporary:
            recover_recordings(self.recordings)
        self.recordings.prune()

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
        self.results.close()
        self.recordings.close()


def serving_url(settings: Settings) -> str:
    """The URL to open: a wildcard host (every interface) is reached as localhost from the same machine."""
    host = "localhost" if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"http://{f'[{host}]' if ':' in host else host}:{settings.port}/"


def token_from(headers: dict, query: str) -> str | None:
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    values = parse_qs(query).get("token")
    if values:
        return values[0]
    cookie = SimpleCookie(headers.get("cookie", ""))
    return cookie[TOKEN_COOKIE].value if TOKEN_COOKIE in cookie else None


def token_ok(expected: str | None, given: str | None) -> bool:
    return expected is None or (given is not None and secrets.compare_digest(expected.encode(), given.encode()))


class TokenMiddleware:
    """Pure ASGI: HTTP requests under PROTECTED_PREFIXES need the token; a valid ``?token=`` sets the cookie."""

    def __init__(self, app, token: str | None):
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send):
        if self.token is None or scope["type"] != "http" or not scope["path"].startswith(PROTECTED_PREFIXES):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        query = scope.get("query_string", b"").decode("latin-1")
        if not token_ok(self.token, token_from(headers, query)):
            response = JSONResponse({"detail": "missing or wrong token"}, status_code=401,
                                    headers={"WWW-Authenticate": "Bearer"})
            return await response(scope, receive, send)
        if "token=" not in query:
            return await self.app(scope, receive, send)

        async def send_with_cookie(message):
            if message["type"] == "http.response.start":
                cookie = f"{TOKEN_COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict"
                message["headers"] = list(message.get("headers", [])) + [(b"set-cookie", cookie.encode())]
            await send(message)
        return await self.app(scope, receive, send_with_cookie)


class BodyLimitMiddleware:
    """Pure ASGI: ``POST /generate`` bodies over the limit get 413 before anything reads them (411 without a
    Content-Length)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != "/generate" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is None or not length.isdigit() or int(length) > self.limit:
            status, detail = (411, "Content-Length required") if length is None else \
                (413, f"request body over the limit of {self.limit} bytes")
            return await JSONResponse({"detail": detail}, status_code=status)(scope, receive, send)
        return await self.app(scope, receive, send)


def public_config(state: AppState) -> dict:
    s, world = state.settings, state.world
    return {
        "actions": list(ACTION_NAMES),
        "units": {"translation": TRANSLATION_UNIT, "rotation": ROTATION_UNIT},
        "bindings": bindings_config(),
        "world": world_summary(world),
        "ready": state.ready,
        "fps": world.fps if world else None,
        "chunk_frames": world.chunk_frames if world else None,
        "limits": {"max_upload_bytes": s.max_upload_bytes, "max_message_bytes": s.max_message_bytes,
                   "max_prompt_chars": s.max_prompt_chars, "max_steps": s.max_steps,
                   "max_sessions": s.max_sessions, "max_waiting": s.max_waiting, "max_jobs": s.max_jobs,
                   "max_job_frames": s.max_job_frames, "max_messages_per_s": s.max_messages_per_s,
                   "client_timeout_s": s.client_timeout_s,
                   "stream_bytes": state.stream_cost.bytes if state.stream_cost else None},
        "samples": list_samples(s.web_dir),
        "token_required": s.token is not None,
        "gradio": s.gradio,
    }


def app_from_env() -> FastAPI:
    """uvicorn's app factory (``uvicorn server.app:app_from_env --factory``): ``create_app`` with the settings of the
    ``WANFLY_*`` environment. ``python -m server`` checks its options, binds the port and logs, then puts its settings
    there (``Settings.to_env``) and names this factory to uvicorn, so that this module, which imports torch and
    diffsynth (seconds), loads only after all that."""
    return create_app(Settings.from_args([]))


def create_app(settings: Settings = None, world: World = None, routes: APIRouter | None = None) -> FastAPI:
    """``routes``: extra routes matched before the built-in ones (``server.cluster``: the cluster-wide ``/readyz``,
    ``/metrics``, jobs and recordings); behind the same token and body-limit middleware."""
    settings = settings or Settings()
    state = AppState(settings, world)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        threading.Thread(target=state.recover, name="wanfly-recover", daemon=True).start()
        if world is not None:
            state.attach(world)
        else:
            threading.Thread(target=state.load, name="wanfly-load", daemon=True).start()
        try:
            yield
        finally:
            await asyncio.to_thread(state.close)

    # FastAPIOffline: /docs and /redoc load Swagger UI and ReDoc from this server, not a CDN (offline deployments)
    app = FastAPIOffline(title="wanfly", version="0.1.0", lifespan=lifespan,
                  description="Real-time drone flight through a generated world (Wan2.2-TI2V-5B + action control). "
                              "The flight WebSocket `/ws` is documented in docs/protocol.md.")
    app.state.wanfly = state
    if routes is not None:
        app.include_router(routes)
    app.include_router(rest_router)
    app.add_exception_handler(RequestValidationError, validation_error)

    @app.get("/healthz", tags=["ops"])
    def healthz():
        return {"ok": True}

    @app.get("/readyz", tags=["ops"])
    def readyz():
        body = {"ready": state.ready, "error": state.load_error, "world": world_summary(state.world)}
        return JSONResponse(body, status_code=200 if state.ready else 503)

    @app.get("/metrics", tags=["ops"], response_class=PlainTextResponse)
    def metrics():
        return PlainTextResponse(state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/api/config", tags=["ui"])
    def config():
        return public_config(state)

    @app.websocket("/ws")
    async def flight_socket(websocket: WebSocket):
        if not token_ok(settings.token, token_from(dict(websocket.headers), websocket.url.query)):
            state.metrics.inc("wanfly_errors_total", code="token")
            return await websocket.close(code=CLOSE_POLICY)
        await websocket.accept()
        await Connection(websocket, state).run()

    if settings.gradio:
        mount_gradio(app, state)
    web_dir = Path(settings.web_dir)
    if web_dir.is_dir():
        app.mount("/", StaticFiles(directory=web_dir, html=True), name="web")
    else:
        log.warning("web UI folder %s is missing; serving the API only", web_dir)
    app.add_middleware(BodyLimitMiddleware, limit=settings.ws_max_size)
    if settings.token:
        app.add_middleware(TokenMiddleware, token=settings.token)
    app.add_middleware(GuardMiddleware, host=settings.host, allowed_hosts=settings.allowed_hosts,  # outermost
                       allowed_origins=settings.allowed_origins, metrics=state.metrics)
    return app
