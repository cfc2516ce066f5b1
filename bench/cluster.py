"""``python -m bench.cluster [--sessions 2 --seconds 20 --replicas 1,2 --rounds 3 --bare_s 40 --pin_cores 1
--out FILE | server options...]``.

Throughput of ``python -m server.cluster`` on CPU, in one run: for each replica count in ``--replicas`` (default
1 then 2) it starts a local Ray with that many CPU replicas (one CPU, one torch thread each) on loopback, flies
``--sessions`` clients at once holding forward + yaw for ``--seconds`` (``bench.serving``'s client, reporting its
input ``--input_hz`` times a second: the browser's rate by default), and counts the
frames they receive, ``--rounds`` times in turn (1, 2, 1, 2, ...: a shared machine's speed drifts by 10-20% over
minutes, which a single pair of runs reads as scaling). Headline: total frames/s per replica count (mean over the
rounds) and the speedup of the last count over the first, the median of the rounds' ratios (the goal of issue 22:
2 replicas serving 2 flights >= 1.7x one replica serving both). Every replica admits all the sessions
(``--max_sessions``), so one replica takes both flights round-robin and two replicas take one each (the ``ready``
messages name the replica: ``details.runs[].replicas_used``).

``--bare_s S`` (default 40; 0 skips) first runs the same chunk generation in plain loops, one process per replica
(each on the core its replica gets, ``--pin_cores``, default 1 as ``python -m server.cluster`` does for CPU replicas)
and no server, first the first count's then the last count's, for S seconds each: ``bare_speedup`` is what the
machine itself gives (two cores sharing caches and memory bandwidth do not make two single cores), and ``of_bare``
the served speedup's share of it (what the serving costs).

A flight is paced to its world's frame rate (a chunk is due when one chunk of playback is left), so frames/s only
measures compute when one flight alone keeps its replica busy: ``BENCH_DEFAULTS`` make the random world's chunk
cost more than its playback (``--steps 12 --fps 64``; check ``chunk_ms_median`` against ``chunk_play_ms``). Other server
options pass through (``--world``, ``--generation causal``, ...). The machine's other load counts: on a shared CPU,
compare ``cpu_share`` (the replicas' generation-thread CPU seconds per wall second, from ``/metrics``) between the
runs, and ``frames_per_cpu_s`` (frames per such CPU second: the work per frame, apart from the share the machine gave).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request

from bench.schema import command_line, describe_device, figures_at, write_result
from bench.serving import fly
from server.bindings import INPUT_HZ
from server.generation.affinity import (
    available_cores,
    can_pin,
    check_cores,
    format_cores,
    pin_this_thread,
    replica_cores,
)
from server.generation.generators import PipelineGenerator, hover_request, warm_up
from server.generation.worlds import load_world
from server.settings import Settings
from server.testing import cluster_process, stop_servers_on_sigterm

BENCH_DEFAULTS = ("--steps", "12", "--fps", "64")  # and cluster_process's own: --world random, --threads 1
GOAL = 1.7
START_TIMEOUT_S = 600.0  # Ray, Serve and the replicas' world loads on a loaded 2-core machine


def read_metrics(url: str) -> dict:
    """``/metrics`` samples by name with labels (``name{labels}`` -> value)."""
    with urllib.request.urlopen(url + "/metrics", timeout=20) as response:
        text = response.read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def summed(metrics: dict, name: str) -> float:
    """A per-replica family summed over the replicas (``name{replica=...}``)."""
    return sum(value for key, value in metrics.items() if key.startswith(name + "{") and 'replica="' in key)


def flights(url: str, sessions: int, seconds: float, input_hz: float) -> list[dict]:
    """``sessions`` clients at once (``bench.serving.fly``), each result naming its replica."""
    results = [{} for _ in range(sessions)]

    async def main():
        await asyncio.gather(*(fly(url, seconds, None, result, input_hz) for result in results))
    asyncio.run(main())
    return results


def one_run(replicas: int, sessions: int, seconds: float, server_args, log_path=None, input_hz=INPUT_HZ) -> dict:
    args = ("--max_sessions", str(sessions), *server_args)
    with cluster_process(*args, replicas=replicas, timeout=START_TIMEOUT_S, log_path=log_path) as url:
        before = read_metrics(url)
        started = time.monotonic()
        results = flights(url, sessions, seconds, input_hz)
        wall = time.monotonic() - started
        after = read_metrics(url)
    frames = sum(r["frames"] for r in results)
    flight_s = statistics.mean(r["seconds"] for r in results)
    cpu = summed(after, "wanfly_chunk_cpu_seconds_total") - summed(before, "wanfly_chunk_cpu_seconds_total")
    chunks = summed(after, "wanfly_chunk_seconds_count") - summed(before, "wanfly_chunk_seconds_count")
    chunk_s = summed(after, "wanfly_chunk_seconds_sum") - summed(before, "wanfly_chunk_seconds_sum")
    gen = [g for r in results for g in r["gen_ms"][1:]] or [g for r in results for g in r["gen_ms"]]
    play_frames = results[0]["chunk_frames"] - (0 if results[0].get("generation") == "causal" else 1)
    return {"replicas": replicas, "sessions": sessions, "seconds": round(flight_s, 2),
            "frames": frames, "frames_per_s": round(frames / flight_s, 2),
            "frames_per_s_per_session": [round(r["frames"] / r["seconds"], 2) for r in results],
            "replicas_used": len({r.get("replica") for r in results}),
            "chunk_ms_median": round(statistics.median(gen), 1) if gen else None,
            "chunk_play_ms": round(1000 * play_frames / results[0]["fps"], 1),
            "chunks": int(chunks), "chunk_s_total": round(chunk_s, 2),
            "cpu_share": round(cpu / wall, 3), "frames_per_cpu_s": round(frames / cpu, 2) if cpu else None,
            "generation": results[0].get("generation"),
            "fps": results[0]["fps"], "size": results[0]["size"]}


def chunk_loop(argv) -> dict:
    """``argv`` = [seconds, server options...]: the world's chunk generation in a plain loop on one torch thread, no
    server: chunks done and CPU ms per chunk (the work a replica's generation thread does, without any serving)."""
    seconds, options = float(argv[0]), list(argv[1:])
    settings = Settings.from_args([*([] if "--world" in options else ["--world", "random"]), "--threads", "1",
                                   *options])
    if settings.cpu_cores:  # as a replica's worker is (--pin_cores)
        pin_this_thread(check_cores(settings.cpu_cores))
    world = load_world(settings)
    generator = PipelineGenerator(world)
    request = hover_request(world, world.steps)
    warm_up(generator)
    started, cpu_started, chunks = time.monotonic(), time.thread_time(), 0
    while time.monotonic() - started < seconds:
        list(generator.generate_stream(request))
        chunks += 1
    return {"chunks": chunks, "cpu_ms_per_chunk": round(1000 * (time.thread_time() - cpu_started) / chunks, 2),
            "seconds": round(time.monotonic() - started, 2), "cores": format_cores(available_cores())}


def loops_at_once(count: int, seconds: float, server_args, pin: bool = True) -> list[dict]:
    """``count`` ``chunk_loop`` processes started together (one torch thread each; loop i on the core replica i
    would take when ``pin``)."""
    command = [sys.executable, "-c", "import json, sys; from bench.cluster import chunk_loop; "
               "print(json.dumps(chunk_loop(sys.argv[1:])))", str(seconds), *server_args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    pin = pin and can_pin()  # as the replicas: not pinned where threads cannot be (not Linux)
    cores = [["--cpu_cores", format_cores(replica_cores(i, 1, available_cores()))] if pin else [] for i in range(count)]
    processes = [subprocess.Popen(command + cores[i], stdout=subprocess.PIPE, env=env, text=True)
                 for i in range(count)]
    outputs = [p.communicate()[0] for p in processes]
    if any(p.returncode for p in processes):
        raise RuntimeError(f"a chunk loop failed (exit codes {[p.returncode for p in processes]})")
    return [json.loads(out.strip().splitlines()[-1]) for out in outputs]


def bare_scaling(counts: list[int], seconds: float, server_args, loops=loops_at_once, pin: bool = True) -> dict:
    """What the machine itself gives: the first count's and the last count's loops at once, no serving, pinned as
    the replicas are. The ratio of their chunks is the ceiling of the served speedup on this machine (shared caches,
    memory bandwidth)."""
    first, last = loops(counts[0], seconds, server_args, pin), loops(counts[-1], seconds, server_args, pin)
    return {"loops": {str(counts[0]): first, str(counts[-1]): last},
            "speedup": round(sum(r["chunks"] for r in last) / sum(r["chunks"] for r in first), 3)}


def figures(report: dict) -> list[dict]:
    specs = []
    for key in report["by_replicas"]:
        specs += [(f"by_replicas.{key}.frames_per_s", "frames/s", f"{key}.frames_per_s"),
                  (f"by_replicas.{key}.chunk_ms_median", "ms", f"{key}.chunk_ms_median"),
                  (f"by_replicas.{key}.cpu_share", "ratio", f"{key}.cpu_share"),
                  (f"by_replicas.{key}.frames_per_cpu_s", "frames/s", f"{key}.frames_per_cpu_s")]
    return figures_at(report, specs + [("speedup", "ratio"), ("speedup_min", "ratio"), ("speedup_max", "ratio"),
                                       ("bare.speedup", "ratio", "bare_speedup"), ("of_bare", "ratio")])


def mean_of(runs: list[dict], key: str):
    values = [r[key] for r in runs]
    return None if None in values else round(statistics.mean(values), 3)


def by_replicas(runs: list[dict]) -> dict:
    """Each replica count's runs summed up: means over the rounds (the chunk time: the median of the medians)."""
    table = {}
    for count in dict.fromkeys(r["replicas"] for r in runs):
        mine = [r for r in runs if r["replicas"] == count]
        chunk = [r["chunk_ms_median"] for r in mine if r["chunk_ms_median"] is not None]
        table[f"replicas_{count}"] = {"replicas": count, "rounds": len(mine),
                                      "frames_per_s": mean_of(mine, "frames_per_s"),
                                      "frames_per_s_rounds": [r["frames_per_s"] for r in mine],
                                      "chunk_ms_median": statistics.median(chunk) if chunk else None,
                                      "cpu_share": mean_of(mine, "cpu_share"),
                                      "frames_per_cpu_s": mean_of(mine, "frames_per_cpu_s"),
                                      "replicas_used": max(r["replicas_used"] for r in mine)}
    return table


def round_speedups(runs: list[dict], counts: list[int]) -> list[float]:
    """Each round's last replica count's frames/s over its first's (rounds without frames at the first count are
    left out)."""
    per_round = len(counts)
    rounds = [runs[i:i + per_round] for i in range(0, len(runs), per_round)]
    return [round(r[-1]["frames_per_s"] / r[0]["frames_per_s"], 3) for r in rounds if r[0]["frames"]]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--replicas", default="1,2", help="replica counts, one run each per round, in this order")
    parser.add_argument("--rounds", type=int, default=3, help="how many times to run the replica counts in turn")
    parser.add_argument("--input_hz", type=float, default=INPUT_HZ,
                        help="how often each client reports its input (default: the browser's, server.bindings)")
    parser.add_argument("--bare_s", type=float, default=40.0,
                        help="also time the chunk loops alone, without serving, this long (0: skip)")
    parser.add_argument("--pin_cores", type=int, choices=(0, 1), default=1,
                        help="each replica's worker, and each bare loop, on its own core (python -m server.cluster's "
                             "default for CPU replicas); 0: anywhere")
    parser.add_argument("--out", default=None, help="write the result (bench.schema) here")
    parser.add_argument("--log", default=None, help="the clusters' output: LOG.<replicas>[.<round>] (default: none)")
    args, server_args = parser.parse_known_args(argv)
    stop_servers_on_sigterm()  # a server it starts stops with it
    if args.bare_s < 0:
        parser.error(f"--bare_s: 0 (skip) or more, got {args.bare_s}")
    if args.input_hz <= 0:
        parser.error(f"--input_hz: must be > 0, got {args.input_hz}")
    if args.rounds < 1:
        parser.error(f"--rounds: at least 1, got {args.rounds}")
    counts = [int(n) for n in args.replicas.split(",")]
    server_args = [*BENCH_DEFAULTS, *server_args]
    # first, on a machine at rest: a Ray cluster still shutting down made one loop's chunks 20% dearer
    bare = bare_scaling(counts, args.bare_s, server_args, pin=bool(args.pin_cores)) if args.bare_s else None
    cluster_args = [*server_args, "--pin_cores", str(args.pin_cores)]
    runs = []
    for round_index in range(args.rounds):
        for count in counts:
            log = None if not args.log else f"{args.log}.{count}" + (f".{round_index}" if args.rounds > 1 else "")
            run = one_run(count, args.sessions, args.seconds, cluster_args, log_path=log, input_hz=args.input_hz)
            runs.append(dict(run, round=round_index))
            print(json.dumps(runs[-1]), flush=True)
    speedups = round_speedups(runs, counts)
    report = {"runs": runs, "by_replicas": by_replicas(runs), "speedup_rounds": speedups,
              "speedup": statistics.median(speedups) if speedups else None,
              "speedup_min": min(speedups, default=None), "speedup_max": max(speedups, default=None), "goal": GOAL}
    if bare is not None:
        report["bare"] = bare
        report["of_bare"] = round(report["speedup"] / bare["speedup"], 3) if report["speedup"] else None
    # a run whose flights shared a replica while another had room measured fewer replicas than it says
    report["spread"] = all(r["replicas_used"] == min(r["replicas"], r["sessions"]) for r in runs)
    report["goal_met"] = report["speedup"] is not None and report["speedup"] >= GOAL and report["spread"]
    headline = ("speedup_rounds", "speedup", "spread", "goal", "goal_met", "of_bare")
    print(json.dumps({k: report.get(k) for k in headline}))
    settings = {"sessions": args.sessions, "seconds": args.seconds, "input_hz": args.input_hz, "replicas": counts,
                "rounds": args.rounds, "bare_s": args.bare_s, "pin_cores": args.pin_cores,
                "server_args": cluster_args, "threads_per_replica": 1}
    device = dict(describe_device("cpu"), threads=1)
    write_result(args.out, "cluster", settings, figures(report), device, details=report,
                 command=command_line("bench.cluster", argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
