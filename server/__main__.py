"""``python -m server [--host --port --world random|toy|<folder> --model_dir --artifacts --preset --compile ...]``

With no weights it serves the toy world (``worlds/toy``) on the CPU; ``--world random`` serves the tiny random-weight
preset. ``--help`` lists every option; each is also an environment variable ``WANFLY_<OPTION>``.

Start-up: the options and the world's paths are checked and the port is taken first (a port in use is one line and
exit 2) with nothing heavy imported, so ``--help`` and every such error answer at once; then a line says that torch
and diffsynth are loading (seconds), and uvicorn imports the app by name (``server.app:app_from_env``, its factory
mode, the settings handed over as ``WANFLY_*`` variables) and serves ``/healthz`` at once on the bound socket while
the app loads the world on a background thread, compiles it (``--compile``) and runs one warm-up generation, logging
each phase; the line ``ready: open http://...`` comes when a flight can start (``/readyz`` answers 200 from then on).
"""
from __future__ import annotations

import errno
import logging
import os
import socket
import sys
from dataclasses import replace
from typing import NoReturn

from server.generation.affinity import check_cores
from server.generation.world_args import check_world_args, with_world_resolved
from server.settings import Settings

log = logging.getLogger("wanfly")
APP_FACTORY = "server.app:app_from_env"  # uvicorn imports it after the checks (server.app imports torch, diffsynth)


def listen_socket(host: str, port: int) -> socket.socket:
    """The server's listening socket, bound here so that a port in use stops the command before anything loads
    (exit 2 with one line); uvicorn serves on this very socket, so nothing can take the port in between."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as error:
        _refuse(f"host {host!r} cannot be resolved ({error.strerror})")
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a TIME_WAIT port is free
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            _refuse(f"port {port} on {host} is already in use (another server?); choose another with --port")
        _refuse(f"cannot listen on {host}:{port} ({error.strerror})")
    return sock


def _refuse(message: str) -> NoReturn:
    print(f"python -m server: error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv=None) -> None:
    settings = Settings.from_args(argv)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sock = listen_socket(settings.host, settings.port)
    settings = replace(settings, port=sock.getsockname()[1])  # --port 0: the port the system chose
    try:
        check_world_args(settings)
        check_cores(settings.cpu_cores)
    except (ValueError, FileNotFoundError) as error:
        sock.close()
        sys.exit(f"error: {error}")
    import uvicorn

    if not settings.model_dir and with_world_resolved(settings).world == "random":
        log.warning("serving the tiny RANDOM-weight preset: the video is noise-like. "
                    "Pass --model_dir and --artifacts for the real model.")
    log.info("listening on %s:%d; loading torch and diffsynth (about 10 s on 2 CPU cores), then the app (web UI, "
             "REST%s)", settings.host, settings.port, ", gradio" if settings.gradio else "")
    for name, text in settings.to_env().items():  # the channel to the app factory: WANFLY_* as documented
        if text is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = text
    config = uvicorn.Config(APP_FACTORY, factory=True, host=settings.host, port=settings.port,
                            ws_max_size=settings.ws_max_size, ws_per_message_deflate=False, ws_ping_interval=20,
                            ws_ping_timeout=20, log_level=settings.log_level, timeout_graceful_shutdown=5)
    try:
        config.load()  # the import of the app, here rather than in uvicorn's loop, so that Ctrl-C stops it at once
    except KeyboardInterrupt:
        sys.exit(130)
    uvicorn.Server(config).run(sockets=[sock])

if __name__ == "__main__":
    main()
