"""``python -m server.cluster`` options: how many replicas, and what each admits (no Ray import here).

    --replicas N        GPU replicas, one GPU each (default: every GPU Ray sees)
    --cpu_replicas N    CPU replicas instead (tests, benchmarks): one CPU each, one torch thread unless --threads
    --address ADDR      a running Ray cluster (``auto``, ``ray://host:10001``); default: start a local one
    --pin_cores 1|0     each replica's generation worker on its own ``--threads`` cores of its node (taken in
                        turn from ``--cpu_cores``, else from all; ``server.generation.affinity``); default: 1 for
                        CPU replicas, 0 for GPU replicas
    (each also as ``WANFLY_REPLICAS``, ``WANFLY_CPU_REPLICAS``, ``WANFLY_ADDRESS``, ``WANFLY_PIN_CORES``; empty means
    not set)

Routing: Serve sends each request to a replica below its ``max_ongoing_requests`` (a flight's WebSocket is one
request for its whole life, so it never moves), the one with the fewest ongoing requests (``server.cluster.routing``).
``max_ongoing_requests`` is what a replica admits: its flights (``--max_sessions``, or the most any default admits),
its waiting line (``--max_waiting``) and ``REQUEST_HEADROOM`` short requests. So a full replica gets the next flight
only when every replica is as full, and a flight beyond all the flight slots still reaches a replica, which answers
with the protocol: a queue position, or ``busy`` and close 1013 once its waiting line is full too.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Optional

from server.settings import DEFAULT_MAX_SESSIONS, ENV_PREFIX, MAX_SESSIONS_CAP, Settings, build_parser, switch_value

APP_NAME = "wanfly"
REQUEST_HEADROOM = 8  # besides flights: /api/config, /readyz, jobs, metrics, and a flight being told "busy"
PROXY_WS_MAX_BYTES = 16 * 1024 * 1024  # the Serve proxy's uvicorn WebSocket message limit (its default)
ROUTER = "server.cluster.routing:FewestRequestsRouter"
PROXY_CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"  # Serve's hook for proxy middleware
PROXY_CALLBACK = "server.cluster.proxy:proxy_middlewares"
RAY_UNAVAILABLE = 3  # the exit status of python -m server.cluster when Ray cannot start (tests skip then)


@dataclass
class ClusterOptions:
    replicas: Optional[int] = None  # GPU replicas (None: every GPU Ray sees)
    cpu_replicas: Optional[int] = None  # CPU replicas instead
    address: Optional[str] = None  # a running Ray cluster; None: start a local one
    pin_cores: Optional[bool] = None  # each replica's worker on its own cores; None: on for CPU replicas

    def __post_init__(self):
        for name in ("replicas", "cpu_replicas"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.replicas is not None and self.cpu_replicas is not None:
            raise ValueError("replicas and cpu_replicas exclude each other: GPU replicas or CPU replicas")

    @property
    def on_cpu(self) -> bool:
        return self.cpu_replicas is not None

    @property
    def pins(self) -> bool:
        return self.on_cpu if self.pin_cores is None else self.pin_cores


def parse_args(argv=None, env=None) -> tuple[Settings, ClusterOptions]:
    """``python -m server`` options plus the replica options; a bad value exits 2 naming the option."""
    parser = build_parser()
    parser.prog = "python -m server.cluster"
    parser.usage = "python -m server.cluster [--option VALUE ...] [--replicas N | --cpu_replicas N] [--address ADDR]"
    parser.description = "wanfly on Ray Serve: one replica per GPU (docs/cluster.md)"
    parser.epilog = (f"Every option can also be set as an environment variable {ENV_PREFIX}<OPTION> (upper case); "
                     "python -m server's options apply to each replica.")
    group = parser.add_argument_group("replicas")
    group.add_argument("--replicas", type=int, default=None, help="GPU replicas, one GPU each (default: all GPUs)")
    group.add_argument("--cpu_replicas", type=int, default=None, help="CPU replicas instead (tests, benchmarks)")
    group.add_argument("--address", default=None, help="a running Ray cluster (default: start a local one)")
    group.add_argument("--pin_cores", default=None, metavar="1|0",
                       help="each replica's generation worker on its own --threads cores (default: 1 for CPU "
                            "replicas, 0 for GPU replicas)")
    namespace = parser.parse_args(argv)
    env = os.environ if env is None else env
    settings = Settings.from_args(argv, env=env, parser=parser)
    try:
        options = ClusterOptions(**{name: replica_option(namespace, env, name)
                                    for name in ("replicas", "cpu_replicas", "address", "pin_cores")})
        gradio_given = namespace.gradio is True or env.get(ENV_PREFIX + "GRADIO", "").lower() in ("1", "true", "yes")
        settings = replica_settings(settings, options, gradio_given=gradio_given)
    except ValueError as bad:
        parser.error(str(bad))
    return settings, options


def replica_option(namespace, env, name: str):
    """The option from the command line, else from ``WANFLY_<NAME>`` (empty: not set), like every server option."""
    value = getattr(namespace, name)
    text = env.get(ENV_PREFIX + name.upper(), "")
    if name == "pin_cores":
        return switch(name, value if value is not None else text or None)
    if value is not None or not text:
        return value
    if name == "address":
        return text
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{ENV_PREFIX}{name.upper()}: not an integer: {text!r}") from None


def switch(name: str, text) -> Optional[bool]:
    """``1/0/true/false/yes/no`` (None: not set); ValueError naming the option."""
    if text is None or isinstance(text, bool):
        return text
    value = switch_value(text)
    if value is None:
        raise ValueError(f"{name}: expected 1 or 0, got {text!r}")
    return value


def replica_settings(settings: Settings, options: ClusterOptions, gradio_given: bool = False) -> Settings:
    """The settings every replica runs with. Gradio is off: its queue keeps each session in one process, and the
    router spreads a session's requests over the replicas (``--gradio 1`` is refused, not ignored)."""
    if gradio_given:
        raise ValueError("gradio: not served by python -m server.cluster (a gradio session must stay in one "
                         "process); use POST /generate, or python -m server for gradio")
    if settings.ws_max_size > PROXY_WS_MAX_BYTES:
        raise ValueError(f"max_upload_bytes: {settings.max_upload_bytes} makes start messages larger than the Serve "
                         f"proxy's WebSocket limit of {PROXY_WS_MAX_BYTES} bytes")
    changes = {"gradio": False}
    if options.on_cpu:
        if settings.device not in ("auto", "cpu"):
            raise ValueError(f"device: CPU replicas run on cpu, got {settings.device!r}")
        changes.update(device="cpu", threads=settings.threads or 1)
    elif settings.device == "auto":
        changes["device"] = "cuda"  # the replica's one GPU (Ray sets CUDA_VISIBLE_DEVICES)
    return replace(settings, **changes)


def flights_per_replica(settings: Settings) -> int:
    """The most flights a replica makes at once: ``--max_sessions``, else the largest default (chunked 4, causal
    up to ``MAX_SESSIONS_CAP``, known only once a replica measured a stream). Too many is harmless (the replica
    answers with a queue position or busy); too few would hold flights in Serve's router, told nothing."""
    return settings.max_sessions or max(DEFAULT_MAX_SESSIONS, MAX_SESSIONS_CAP)


def max_ongoing_requests(settings: Settings) -> int:
    return flights_per_replica(settings) + settings.max_waiting + REQUEST_HEADROOM


def deployment_options(settings: Settings, options: ClusterOptions, replicas: int) -> dict:
    """Serve's options for the ``Flights`` deployment: ``replicas`` replicas, one GPU (or one CPU) each."""
    resources = {"num_cpus": 1} if options.on_cpu else {"num_cpus": 1, "num_gpus": 1}
    return {"num_replicas": replicas, "ray_actor_options": resources,
            "max_ongoing_requests": max_ongoing_requests(settings),
            "request_router_config": {"request_router_class": ROUTER},
            "health_check_period_s": 5.0, "health_check_timeout_s": 30.0, "graceful_shutdown_timeout_s": 4.0,
            "max_constructor_retry_count": 3,  # a world that cannot load fails the deployment soon
            "logging_config": {"log_level": "DEBUG" if settings.log_level == "trace" else settings.log_level.upper()}}


def replica_count(options: ClusterOptions, gpus: float) -> int:
    """``--cpu_replicas``, ``--replicas``, or every GPU Ray sees; ValueError when there are none."""
    if options.on_cpu:
        return options.cpu_replicas
    if options.replicas is not None:
        if options.replicas > gpus:
            raise ValueError(f"replicas: {options.replicas} GPU replicas asked, Ray sees {gpus:g} GPUs")
        return options.replicas
    if gpus < 1:
        raise ValueError("replicas: Ray sees no GPU; pass --cpu_replicas N to serve on CPU")
    return int(gpus)
