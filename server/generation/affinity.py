"""Which CPU cores the generation worker runs on (``--cpu_cores``; Linux).

A worker pinned to its own cores keeps its caches warm: on a CPU host, two replicas whose generation threads the
scheduler is free to swap between cores lose 3-5% per frame against two pinned ones (docs/performance.md, "Serving
on Ray Serve"). ``python -m server.cluster`` gives each CPU replica its own ``--threads`` cores (``replica_cores``).
Only the worker thread is pinned, before it runs anything: torch's threads it starts inherit its cores, while the
event loop, the JPEG delivery and Ray's threads stay free to run on any core.
"""
from __future__ import annotations

import os
import re
from typing import Optional, Sequence

_PART = re.compile(r"(\d+)(?:-(\d+))?")


def parse_cores(text: Optional[str]) -> list[int]:
    """``"0-3"``, ``"0,2,4"``, ``"0-1,6"`` -> sorted core numbers; None or empty -> []. ValueError naming
    ``cpu_cores`` otherwise."""
    if text is None or not str(text).strip():
        return []
    cores: set[int] = set()
    for part in str(text).split(","):
        match = _PART.fullmatch(part.strip())
        if match is None:
            raise ValueError(f"cpu_cores: expected core numbers and ranges like 0-3,6, got {text!r}")
        first, last = int(match[1]), int(match[2] if match[2] is not None else match[1])
        if last < first:
            raise ValueError(f"cpu_cores: the range {part.strip()!r} runs backwards")
        cores.update(range(first, last + 1))
    return sorted(cores)


def format_cores(cores: Sequence[int]) -> str:
    return ",".join(str(core) for core in cores)


def can_pin() -> bool:
    return hasattr(os, "sched_setaffinity")


def available_cores() -> list[int]:
    """The cores this process may run on (all of them where the platform cannot say)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def check_cores(text: Optional[str]) -> list[int]:
    """``parse_cores``, and every core must be one this process may run on (ValueError naming ``cpu_cores``)."""
    cores = parse_cores(text)
    if not cores:
        return cores
    if not can_pin():
        raise ValueError("cpu_cores: pinning threads to cores needs Linux; leave it unset here")
    available = available_cores()
    missing = sorted(set(cores) - set(available))
    if missing:
        raise ValueError(f"cpu_cores: core(s) {missing} are not available here (available: {format_cores(available)})")
    return cores


def replica_cores(local_rank: int, threads: int, pool: Sequence[int]) -> list[int]:
    """The ``threads`` cores of the replica at ``local_rank`` on its node: consecutive slices of ``pool``, from
    rank 0 on, wrapping around when there are more replicas than cores."""
    if threads < 1 or not pool:
        raise ValueError(f"replica_cores: need threads >= 1 and some cores, got {threads} and {list(pool)}")
    start = local_rank * threads
    return sorted({pool[(start + i) % len(pool)] for i in range(min(threads, len(pool)))})


def pin_this_thread(cores: Sequence[int]) -> None:
    """Run the calling thread (and the threads it starts from now on) only on ``cores``."""
    os.sched_setaffinity(0, set(cores))  # on Linux, 0 is the calling thread, not the whole process
