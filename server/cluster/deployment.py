"""The Serve application: ``Flights`` (the app of ``server.app.create_app``, one per replica) and ``Board``.

    build(settings, replicas, on_cpu)   the application ``python -m server.cluster`` runs
    app_builder(args)                   the same for ``serve run deploy/serve.yaml`` (args: the options by name)

A ``Flights`` replica loads its world in its constructor, so Serve routes nothing to it until it can fly (and a
replica Ray restarts after a crash rejoins only once loaded). It serves the same routes and protocol as
``python -m server`` (gradio aside, ``server.cluster.options``), with the cluster routes of ``server.cluster.routes``
in front; its ``ready`` messages name it (``replica``). Serve's health check calls ``check_health``. Ray is
imported inside functions, so this module loads without it (``python -m server.cluster`` then says what to install).
"""
from __future__ import annotations

import dataclasses
import logging

from server.app import create_app
from server.cluster.board import Board
from server.cluster.options import (
    APP_NAME,
    ClusterOptions,
    deployment_options,
    replica_count,
    replica_settings,
    switch,
)
from server.cluster.routes import BoardClient, ReplicaWrapper, Reporter, cluster_routes
from server.generation.affinity import available_cores, can_pin, format_cores, parse_cores, replica_cores
from server.generation.worlds import load_world
from server.settings import Settings
from server.settings import _convert as convert  # the command line's and WANFLY_*'s conversion of a text value

log = logging.getLogger("wanfly.cluster")
DEPLOYMENT = "Flights"
BOARD_OPTIONS = {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0}, "max_ongoing_requests": 256,
                 "graceful_shutdown_timeout_s": 1.0, "graceful_shutdown_wait_loop_s": 0.5,
                 "logging_config": {"enable_access_log": False}}  # replicas report every second


class Flights:
    """One replica: its world, its app (engine, sessions, jobs), its reporter. ``pin_cores``: its generation worker
    runs on the cores of its rank on its node (``pinned``)."""

    def __init__(self, settings: Settings, board, target: int, pin_cores: bool = False):
        from ray import serve
        context = serve.get_replica_context()
        self.replica, self.app_name = context.replica_id.unique_id, context.app_name
        if pin_cores:
            settings = pinned(settings, getattr(getattr(context, "rank", None), "local_rank", None))
        self.settings, self.target, self.board = settings, target, BoardClient(board)
        self.world = load_world(settings)  # before Serve routes anything here
        self.fastapi = self.reporter = None

    def __serve_build_asgi_app__(self):
        jobs: set = set()
        routes = cluster_routes(self.board, self.target, jobs, replica_states=self.replica_states)
        self.fastapi = create_app(self.settings, world=self.world, routes=routes)
        state = self.fastapi.state.wanfly
        state.replica = self.replica
        self.reporter = Reporter(state, self.board, jobs).start()
        return ReplicaWrapper(self.fastapi, state, self.board)

    def replica_states(self) -> dict:
        """Serve's count of this deployment's replicas by state (``RUNNING``, ``STARTING``, ...)."""
        from ray import serve
        deployment = serve.status().applications[self.app_name].deployments[DEPLOYMENT]
        return {getattr(state, "value", str(state)): count for state, count in deployment.replica_states.items()}

    def check_health(self) -> None:
        state = self.fastapi.state.wanfly
        if not state.ready:
            raise RuntimeError(state.load_error or "the engine is not running")

    def __del__(self):
        if getattr(self, "reporter", None) is not None:
            self.reporter.stop()


def pinned(settings: Settings, local_rank) -> Settings:
    """The settings with the cores of the replica at ``local_rank`` on this node (``--threads`` of them, from
    ``--cpu_cores`` or every core here); unchanged, with a warning, when Serve gives no rank or this platform cannot
    pin threads (not Linux)."""
    if local_rank is None or not can_pin():
        why = "Serve gave this replica no rank on its node" if local_rank is None else "threads cannot be pinned here"
        log.warning("pin_cores: %s; this replica's worker is not pinned", why)
        return settings
    pool = parse_cores(settings.cpu_cores) or available_cores()
    cores = replica_cores(local_rank, settings.threads or 1, pool)
    return dataclasses.replace(settings, cpu_cores=format_cores(cores))


def build(settings: Settings, replicas: int, on_cpu: bool, pin_cores: bool = None):
    """The application: ``replicas`` ``Flights`` replicas (one GPU, or one CPU, each) and one ``Board``; each
    replica's worker on its own cores when ``pin_cores`` (default: on CPU replicas)."""
    from ray import serve
    board = serve.deployment(Board, name="Board", **BOARD_OPTIONS).bind(jobs_kept=settings.jobs_kept,
                                                                         recordings_kept=settings.recordings_kept)
    count = {"cpu_replicas": replicas} if on_cpu else {"replicas": replicas}
    options = ClusterOptions(**count, pin_cores=pin_cores)
    flights = serve.deployment(serve.ingress()(Flights), name=DEPLOYMENT,
                               **deployment_options(settings, options, replicas))
    return flights.bind(settings, board, replicas, options.pins)


def text_value(field: dataclasses.Field, text: str):
    """A ``serve run`` argument converted as the command line converts it; ValueError naming the option."""
    try:
        return convert(field, text)
    except ValueError as error:
        message = str(error)
        raise ValueError(message if message.startswith(field.name + ":") else f"{field.name}: {message}") from None


def app_builder(args: dict):
    """``serve run`` / ``serve deploy``: ``args`` are ``python -m server`` options by name, plus ``replicas`` (default:
    every GPU Ray sees now; given, Serve waits until they fit) or ``cpu_replicas``. Unknown names are refused by
    name."""
    args = dict(args or {})
    counts = {name: args.pop(name, None) for name in ("replicas", "cpu_replicas")}
    try:  # `serve run module:app_builder name=value` passes strings
        counts = {name: int(value) if isinstance(value, str) else value for name, value in counts.items()}
    except ValueError:
        raise ValueError(f"replicas, cpu_replicas: integers, got {counts}") from None
    options = ClusterOptions(**counts, pin_cores=switch("pin_cores", args.pop("pin_cores", None)))
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    unknown = sorted(set(args) - set(fields))
    if unknown:
        raise ValueError(f"{unknown[0]}: not a python -m server option (args of {APP_NAME!r} in the Serve config)")
    args = {name: text_value(fields[name], value) if isinstance(value, str) else value for name, value in args.items()}
    settings = replica_settings(Settings(**args), options, gradio_given=args.get("gradio") is True)
    if options.on_cpu:
        return build(settings, options.cpu_replicas, on_cpu=True, pin_cores=options.pins)
    if options.replicas is not None:  # not checked against the GPUs there now: an autoscaler may add them (KubeRay)
        return build(settings, options.replicas, on_cpu=False, pin_cores=options.pins)
    import ray
    return build(settings, replica_count(options, ray.cluster_resources().get("GPU", 0)), on_cpu=False,
                 pin_cores=options.pins)
