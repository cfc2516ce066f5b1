"""``python -m server.cluster [python -m server options] [--replicas N | --cpu_replicas N] [--address ADDR]``

The app on Ray Serve: one replica per GPU (or ``--cpu_replicas`` on CPU), behind Serve's proxy at ``--host``/``--port``,
with the same routes and protocol as ``python -m server``. Without ``--address`` it starts a local Ray cluster
(stopped with this process) whose nodes get ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` (``server.cluster.proxy``)
and this checkout on their ``PYTHONPATH``. Runs until SIGINT or SIGTERM, then shuts Serve and Ray down.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading

from server.cluster.deployment import build
from server.cluster.options import (
    APP_NAME,
    PROXY_CALLBACK,
    PROXY_CALLBACK_ENV,
    RAY_UNAVAILABLE,
    parse_args,
    replica_count,
)
from server.generation.affinity import check_cores
from server.generation.world_args import check_world_args, with_world_resolved
from server.settings import REPO_ROOT

log = logging.getLogger("wanfly.cluster")
SHUTDOWN_S = 6.0


def node_environment(env: dict) -> dict:
    """What a local Ray cluster's processes need: the proxy middleware and this checkout first on the path."""
    path = env.get("PYTHONPATH", "")
    return {PROXY_CALLBACK_ENV: env.get(PROXY_CALLBACK_ENV) or PROXY_CALLBACK,
            "PYTHONPATH": str(REPO_ROOT) + (os.pathsep + path if path else "")}


def main(argv=None) -> None:
    settings, options = parse_args(argv)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        check_world_args(settings)
        if options.address is None:  # a local cluster: its node is this machine
            check_cores(settings.cpu_cores)
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")
    try:
        import ray
        from ray import serve
    except ImportError:
        sys.exit("error: Ray Serve is not installed: pip install -e '.[cluster]' (scripts/setup.sh dev installs it)")
    try:
        if options.address is None:
            os.environ.update(node_environment(dict(os.environ)))
            ray.init(num_cpus=max(os.cpu_count() or 1, options.cpu_replicas or 0), include_dashboard=False)
        else:
            ray.init(address=options.address)
            log.warning("a running Ray cluster: its nodes need %s=%s so a flight whose replica dies is told",
                        PROXY_CALLBACK_ENV, PROXY_CALLBACK)
    except Exception as error:  # a sandbox without shared memory, a wrong address, ...
        print(f"error: Ray could not start: {error}", file=sys.stderr)
        sys.exit(RAY_UNAVAILABLE)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        try:
            replicas = replica_count(options, ray.cluster_resources().get("GPU", 0))
        except ValueError as error:
            sys.exit(f"error: {error}")
        serve.start(http_options={"host": settings.host, "port": settings.port})
        app = build(settings, replicas, options.on_cpu, options.pins)
        serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
        if with_world_resolved(settings).world == "random" and not settings.model_dir:
            log.warning("serving the tiny RANDOM-weight preset: the video is noise-like")
        log.info("%d %s replicas serving: open http://%s:%d/", replicas, "CPU" if options.on_cpu else "GPU",
                 settings.host, settings.port)
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        shutdown(serve, ray)


def shutdown(serve, ray, timeout_s: float = SHUTDOWN_S) -> None:
    """Serve's graceful shutdown (replicas close their flights and engines) for at most ``timeout_s``, then Ray's,
    which ends whatever is left (``docker stop`` waits 10 s before it kills)."""
    thread = threading.Thread(target=serve.shutdown, name="serve-shutdown", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        log.warning("Serve did not shut down within %.0f s; stopping Ray", timeout_s)
    ray.shutdown()


if __name__ == "__main__":
    main()
