"""The board: one per application (a Serve deployment of one replica, no GPU), what the replicas report and the
results any ingress serves.

    report(replica, info, metrics, jobs)   each replica every ``REPORT_S``: pid, node, flights active and waiting,
                                           its capacity, its /metrics text, the views of the jobs it runs
    serving()                              the replicas heard from within ``STALE_S`` (a dead one drops out then)
    put_job / job / job_video              a job's view from ``POST /generate`` on, and its video once done
    put_recording / recording              a finished flight's mp4 and JSON

Jobs' videos and flight recordings go into Ray's object store, put there by the board: the board owns them, so they
outlive the replica that made them, and Ray spills them to disk under memory pressure. It keeps the newest
``jobs_kept`` jobs and ``recordings_kept`` recordings. A job whose replica stopped reporting before the job finished
reads as failed. ``cluster_view`` and ``merge_metrics`` turn the reports into ``/readyz`` and ``/metrics``.
"""
from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from typing import Callable, Optional

REPORT_S = 1.0  # how often a replica reports
STALE_S = 5.0  # a replica not heard from for this long is not serving (killed, hung, or its node is gone)
FORGET_S = 300.0  # and its report is dropped after this long
ACTIVE_JOB = ("queued", "running")


def _ray_put(data: bytes):
    import ray
    return ray.put(data)


def _ray_get(ref) -> bytes:
    import ray
    return ray.get(ref)


class Board:
    def __init__(self, jobs_kept: int = 32, recordings_kept: int = 16, put: Callable = _ray_put,
                 get: Callable = _ray_get, clock: Callable[[], float] = time.monotonic):
        self.jobs_kept, self.recordings_kept = jobs_kept, recordings_kept
        self.put, self.get, self.clock = put, get, clock
        self._lock = threading.Lock()
        self._replicas: dict[str, dict] = {}  # id -> {"info", "metrics", "seen"}
        self._seen: dict[str, float] = {}  # id -> when it last reported or put a job (it is alive)
        self._jobs: OrderedDict[str, dict] = OrderedDict()  # id -> {"view", "replica", "video"}
        self._recordings: OrderedDict[str, dict] = OrderedDict()  # id -> {".mp4": ref, ".json": ref}

    # ---- replicas ------------------------------------------------------------------------------------------
    def report(self, replica: str, info: dict, metrics: str = "", jobs: Optional[list] = None) -> None:
        now = self.clock()
        with self._lock:
            self._replicas[replica] = {"info": dict(info, replica=replica), "metrics": metrics, "seen": now}
            self._seen[replica] = now
            for old in [r for r, seen in self._seen.items() if now - seen > FORGET_S]:
                self._replicas.pop(old, None)
                del self._seen[old]
            for view in jobs or ():
                self._set_job(replica, view, None)

    def serving(self) -> list[dict]:
        """The replicas heard from within ``STALE_S``: their last info, ``age_s`` and ``metrics`` text."""
        now = self.clock()
        with self._lock:
            return [dict(entry["info"], age_s=round(now - entry["seen"], 3), metrics=entry["metrics"])
                    for entry in self._replicas.values() if now - entry["seen"] <= STALE_S]

    def _alive(self, replica: str) -> bool:
        return self.clock() - self._seen.get(replica, float("-inf")) <= STALE_S

    # ---- jobs ----------------------------------------------------------------------------------------------
    def put_job(self, replica: str, view: dict, video: Optional[bytes] = None) -> None:
        ref = None if video is None else self.put(video)
        with self._lock:
            self._seen[replica] = self.clock()  # a replica may take a job before its first report
            self._set_job(replica, view, ref)

    def _set_job(self, replica: str, view: dict, ref) -> None:
        entry = self._jobs.get(view["id"])
        if entry is not None and entry["view"]["status"] in ("done", "failed"):
            return  # a late status report never reopens a finished job
        self._jobs[view["id"]] = {"view": dict(view), "replica": replica, "video": ref}
        self._jobs.move_to_end(view["id"])
        finished = [j for j, e in self._jobs.items() if e["view"]["status"] in ("done", "failed")]
        for old in finished[:max(0, len(finished) - self.jobs_kept)]:
            del self._jobs[old]

    def job(self, job_id: str) -> Optional[dict]:
        """The job's last view; a queued or running job of a replica that stopped reporting reads as failed."""
        with self._lock:
            entry = self._jobs.get(job_id)
            if entry is None:
                return None
            view = dict(entry["view"])
            if view["status"] in ACTIVE_JOB and not self._alive(entry["replica"]):
                view.update(status="failed", error=f"replica {entry['replica']} running the job stopped",
                            position=0)
            return view

    def job_video(self, job_id: str) -> Optional[bytes]:
        with self._lock:
            entry = self._jobs.get(job_id)
            ref = None if entry is None else entry["video"]
        return None if ref is None else self.get(ref)

    # ---- recordings ----------------------------------------------------------------------------------------
    def put_recording(self, recording_id: str, video: bytes, actions: bytes) -> None:
        refs = {".mp4": self.put(video), ".json": self.put(actions)}
        with self._lock:
            self._recordings[recording_id] = refs
            while len(self._recordings) > self.recordings_kept:
                self._recordings.popitem(last=False)

    def recording(self, recording_id: str, suffix: str) -> Optional[bytes]:
        with self._lock:
            ref = self._recordings.get(recording_id, {}).get(suffix)
        return None if ref is None else self.get(ref)


# ---- /readyz and /metrics from the reports ---------------------------------------------------------------------
def cluster_view(serving: list[dict], target: int, states: Optional[dict] = None) -> dict:
    """``/readyz``'s ``cluster``: replicas serving against the target (fewer: ``degraded``), Serve's count of the
    replicas by state (``states``: a dead replica leaves RUNNING at once, its report goes stale only after
    ``STALE_S``; one Ray brings back is STARTING until its world is loaded), each replica's flights and the capacity
    of those reporting."""
    replicas = sorted(({k: v for k, v in r.items() if k != "metrics"} for r in serving), key=lambda r: r["replica"])
    count = len(replicas) if states is None else min(len(replicas), states.get("RUNNING", 0))
    total = {key: sum(r.get(key, 0) for r in replicas) for key in ("active", "waiting", "max_sessions", "max_waiting")}
    return {"replicas_target": target, "replicas_serving": count, "degraded": count < target,
            "replica_states": states, "sessions": total, "replicas": replicas}


SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")
TOTALS = {  # cluster-wide gauges: (help, the info key summed over the replicas serving)
    "wanfly_cluster_sessions_active": ("flight sessions generating, all replicas", "active"),
    "wanfly_cluster_sessions_queued": ("flight sessions waiting for a turn, all replicas", "waiting"),
    "wanfly_cluster_max_sessions": ("flights the replicas serving can make at once", "max_sessions"),
    "wanfly_cluster_jobs_queued": ("jobs waiting, all replicas", "jobs_queued"),
}


def number(value: float) -> str:
    return f"{value:.12g}"  # counts stay exact (to 10^12), sums keep their microseconds


def with_label(sample: str, name: str, value: str) -> str:
    """``metric{a="b"} 1`` -> ``metric{replica="r",a="b"} 1``."""
    match = SAMPLE.match(sample)
    if match is None:
        raise ValueError(f"metrics: not a Prometheus sample line: {sample!r}")
    labels = f'{name}="{value}"' + (f",{match['labels']}" if match["labels"] else "")
    return f"{match['name']}{{{labels}}} {match['value']}"


def merge_metrics(serving: list[dict], target: int) -> str:
    """Every serving replica's /metrics text, each sample labelled ``replica="<id>"`` (one HELP/TYPE per family),
    then the cluster-wide gauges: replicas serving and target, flights active and queued, capacity, and the
    block (chunk) time histogram summed over the replicas serving."""
    families: OrderedDict[str, dict] = OrderedDict()
    for report in sorted(serving, key=lambda r: r["replica"]):
        family = None
        for line in report.get("metrics", "").splitlines():
            if line.startswith("# HELP "):
                family = families.setdefault(line.split()[2], {"help": line, "type": None, "samples": []})
            elif line.startswith("# TYPE ") and family is not None:
                family["type"] = line
            elif line and not line.startswith("#") and family is not None:
                family["samples"].append(with_label(line, "replica", report["replica"]))
    lines = []
    for family in families.values():
        lines += [family["help"], family["type"] or "", *family["samples"]]
    lines += ["# HELP wanfly_cluster_replicas Serve replicas of the flight deployment, by state",
              "# TYPE wanfly_cluster_replicas gauge",
              f'wanfly_cluster_replicas{{state="target"}} {target}',
              f'wanfly_cluster_replicas{{state="serving"}} {len(serving)}']
    for name, (help_text, key) in TOTALS.items():
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge",
                  f"{name} {number(sum(r.get(key, 0) for r in serving))}"]
    lines += summed_histogram(families, "wanfly_chunk_seconds", "wanfly_cluster_chunk_seconds")
    return "\n".join(line for line in lines if line) + "\n"


def summed_histogram(families: dict, source: str, name: str) -> list[str]:
    """The per-replica samples of histogram ``source`` summed bucket by bucket, as a new family ``name``."""
    family = families.get(source)
    if family is None:
        return []
    sums: OrderedDict[str, float] = OrderedDict()
    for sample in family["samples"]:
        match = SAMPLE.match(sample)
        le = re.search(r'le="([^"]*)"', match["labels"] or "")
        key = name + match["name"][len(source):] + (f'{{le="{le.group(1)}"}}' if le else "")  # _bucket, _sum, _count
        sums[key] = sums.get(key, 0.0) + float(match["value"])
    return [f"# HELP {name} flight chunk (causal: block) time, summed over the replicas serving now",
            f"# TYPE {name} histogram"] + [f"{key} {number(value)}" for key, value in sums.items()]
