"""``python -m server [--host --port --world random|<folder> --model_dir --artifacts --device --max_sessions ...]``

With no weights it serves the tiny random-weight preset on CPU (the UI says so). ``--help`` lists every option;
each is also an environment variable ``WANFLY_<OPTION>``. ``--preset realtime`` picks the real-time generation
settings; ``--compile`` compiles the DiT blocks and the controller when the app loads the world (in the background,
``/healthz`` answers meanwhile), and the app's warm-up generation pays the compilation, so no user's chunk does.
"""
from __future__ import annotations

import logging
import sys

from server.app import create_app
from server.generation.worlds import check_world_args, with_world_resolved
from server.settings import Settings


def main(argv=None) -> None:
    settings = Settings.from_args(argv)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        check_world_args(settings)
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")
    import uvicorn

    app = create_app(settings)
    if not settings.model_dir and with_world_resolved(settings).world == "random":
        logging.getLogger("wanfly").warning("serving the tiny RANDOM-weight preset: the video is noise-like. "
                                            "Pass --model_dir and --artifacts for the real model.")
    logging.getLogger("wanfly").info("open http://%s:%d/", settings.host, settings.port)
    uvicorn.run(app, host=settings.host, port=settings.port, ws_max_size=settings.ws_max_size,
                ws_per_message_deflate=False, ws_ping_interval=20, ws_ping_timeout=20,
                log_level=settings.log_level, timeout_graceful_shutdown=5)


if __name__ == "__main__":
    main()
