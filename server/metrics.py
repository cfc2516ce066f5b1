"""Prometheus metrics (text exposition format 0.0.4), thread-safe, no dependency."""
from __future__ import annotations

import os
import threading
from collections import defaultdict
from typing import Optional

CHUNK_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, float("inf"))

COUNTERS = {
    "wanfly_chunks_total": "flight chunks generated",
    "wanfly_frames_sent_total": "video frames sent to clients",
    "wanfly_frames_dropped_total": "stale frames dropped because a client read too slowly",
    "wanfly_stalls_total": "chunks delivered after the client's playback buffer had run out",
    "wanfly_errors_total": "errors reported to clients, by code",
    "wanfly_sessions_total": "flight sessions started",
    "wanfly_sessions_refused_total": "flight sessions refused (server full)",
    "wanfly_slow_clients_closed_total": "connections closed because a send blocked past the timeout",
    "wanfly_messages_dropped_total": "client messages dropped by the per-connection rate limit",
    "wanfly_flights_paused_total": "flights paused because their client showed no sign of playing",
    "wanfly_jobs_total": "REST/gradio jobs, by final status",
    "wanfly_jpeg_seconds_total": "time spent encoding JPEG frames",
    "wanfly_send_seconds_total": "time spent in WebSocket sends of frames",
    "wanfly_first_frame_seconds_total": "time from a chunk's last denoising step to its first frame handed to the "
                                        "connection (streaming flights of chunked worlds)",
    "wanfly_chunks_delivered_total": "chunks counted in wanfly_first_frame_seconds_total",
    "wanfly_chunk_cpu_seconds_total": "CPU time of the generation thread in flight chunks (blocks): the work, apart "
                                      "from the CPU other processes take (with --threads 1, all of it on CPU)",
}
GAUGES = {
    "wanfly_sessions_active": "flight sessions generating",
    "wanfly_sessions_queued": "flight sessions waiting for a turn",
    "wanfly_flights_paused": "flights paused now (their client shows no sign of playing)",
    "wanfly_jobs_queued": "jobs waiting",
    "wanfly_connections": "open WebSocket connections",
    "wanfly_ready": "1 when the model is loaded",
    "wanfly_streams_open": "causal worlds: flights' streams open (K/V and decoder caches resident)",
    "wanfly_stream_bytes": "causal worlds: one stream's measured memory (server.generation.streams.measure_stream)",
    "wanfly_pacing_lead_seconds": "causal worlds: client playback left when a flight's next block starts",
}


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self._counters = defaultdict(float)  # (name, labels) -> value
        self._gauges = {}
        self._hist = [0] * len(CHUNK_BUCKETS)
        self._hist_sum = 0.0
        self._hist_count = 0

    def inc(self, name: str, value: float = 1.0, **labels) -> None:
        assert name in COUNTERS, name
        with self._lock:
            self._counters[(name, tuple(sorted(labels.items())))] += value

    def set(self, name: str, value: float) -> None:
        assert name in GAUGES, name
        with self._lock:
            self._gauges[name] = value

    def observe_chunk(self, seconds: float) -> None:
        with self._lock:
            self._hist_sum += seconds
            self._hist_count += 1
            for i, bound in enumerate(CHUNK_BUCKETS):
                if seconds <= bound:
                    self._hist[i] += 1

    def value(self, name: str, **labels) -> float:
        with self._lock:
            if name in GAUGES:
                return self._gauges.get(name, 0.0)
            if labels:
                return self._counters.get((name, tuple(sorted(labels.items()))), 0.0)
            return sum(v for (n, _), v in self._counters.items() if n == name)

    def render(self) -> str:
        lines = []
        with self._lock:
            for name, help_text in COUNTERS.items():
                lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
                rows = [(labels, v) for (n, labels), v in sorted(self._counters.items()) if n == name] or [((), 0.0)]
                for labels, v in rows:
                    label_text = ",".join(f'{k}="{val}"' for k, val in labels)
                    lines.append(f"{name}{{{label_text}}} {v:g}" if label_text else f"{name} {v:g}")
            for name, help_text in GAUGES.items():
                lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {self._gauges.get(name, 0):g}"]
            rss = resident_bytes()
            if rss is not None:
                name = "process_resident_memory_bytes"
                lines += [f"# HELP {name} resident memory of the server process", f"# TYPE {name} gauge",
                          f"{name} {rss}"]
            name = "wanfly_chunk_seconds"
            lines += [f"# HELP {name} generation time of one flight chunk (a causal world: one block's whole turn)",
                      f"# TYPE {name} histogram"]
            for bound, count in zip(CHUNK_BUCKETS, self._hist):
                le = "+Inf" if bound == float("inf") else f"{bound:g}"
                lines.append(f'{name}_bucket{{le="{le}"}} {count}')
            lines += [f"{name}_sum {self._hist_sum:.6f}", f"{name}_count {self._hist_count}"]
        return "\n".join(lines) + "\n"


def resident_bytes() -> Optional[int]:
    """This process's resident memory (Linux ``/proc/self/statm``), or None elsewhere."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None
