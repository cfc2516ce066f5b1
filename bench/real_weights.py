"""``python -m bench.real_weights [--work DIR --out FILE --time_limit S --flight_seconds S --drop_caches --dry_run]``

The real-weights path at full size, on one GPU, with a folder in the original Wan2.2-TI2V-5B layout holding random
weights (``python -m models.fake_model_dir``); every step in its own process, as a user runs it:

    write    python -m models.fake_model_dir WORK/fake                (~22.8 GB; fill, write and fsync timed)
    load     WanActionPipeline.from_model_dir(WORK/fake) on cuda: classes, a prompt encoded, a short generation
    flight   python -m server --model_dir WORK/fake --preset realtime, flown by a WebSocket client (bench.serving)
    data     2 synthetic clips of 17 frames at 480x832 (training.data.synthetic)
    train    python -m training.train --model_dir WORK/fake --lora_base_model dit --max_steps 2 (and the controller)
    merge    python -m training.merge_lora --model_dir WORK/fake --lora_path WORK/run --output_dir WORK/merged
    reload   the load step on WORK/merged (and how far the merged weights moved from the base)

A step runs only when the steps it needs passed and time is left (``--time_limit`` for the whole chain). The result
(bench.schema, bench "real_weights") holds per step: pass | fail | timeout | skipped, seconds, peak GPU memory (the
device's, nvidia-smi sampled every 0.5 s), peak host memory of the step's process, and the log's tail when it did
not pass; it is rewritten after every step. Exit status 0 when every step passed. ``bench/real_weights.sh`` runs it
on the GPU machine. ``load`` and ``data`` are also sub-commands (``python -m bench.real_weights load FOLDER ...``).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from bench.schema import command_line, describe_device, figure, write_result
from bench.serving import readyz
from bench.serving import run as fly
from models.artifacts import CONFIG_NAME, CONTROLLER_NAME, LORA_NAME
from server.testing import server_process, stop_servers_on_sigterm

MARKER = ".wanfly-real-weights"  # a work folder this bench made (and may clear)
TRAIN_SIZE = {"frames": 17, "height": 480, "width": 832, "clips": 2}
STEP_LINE = re.compile(r"step (\d+) \| loss ([-+0-9.eE]+|nan|inf) .*step_time ([0-9.]+)s")


@dataclass
class Step:
    """One step: a command run in its own process, or a function run here (the flight's WebSocket client).
    ``check(record)`` reads what the step wrote and returns the details to keep; it raises to fail the step."""
    name: str
    limit: float
    command: Optional[list] = None
    function: Optional[Callable[[float, str], dict]] = None  # (seconds allowed, log path) -> details
    needs: tuple = ()
    check: Optional[Callable[[dict], dict]] = None
    info: dict = field(default_factory=dict)


class GpuMemory:
    """The device's used memory, sampled by ``nvidia-smi -lms`` while a step runs (None without nvidia-smi)."""

    def __init__(self, period_ms: int = 500):
        self.peak_mib, self.process = None, None
        if shutil.which("nvidia-smi"):
            query = ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", f"--loop-ms={period_ms}"]
            self.process = subprocess.Popen(query, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self.thread = threading.Thread(target=self._read, daemon=True)
            self.thread.start()

    def _read(self):
        for line in self.process.stdout:
            if line.strip().isdigit():
                self.peak_mib = max(self.peak_mib or 0, int(line.strip()))

    def stop(self) -> Optional[float]:
        if self.process is not None:
            self.process.terminate()
            self.process.wait()
            self.thread.join(timeout=5)
        return None if self.peak_mib is None else round(self.peak_mib * 2**20 / 1e9, 3)


def run_command(command: list, limit: float, log_path: str) -> tuple[Optional[int], float, Optional[float]]:
    """(exit status or None when killed at the limit, seconds, peak host memory of the process in GB)."""
    started = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
        status, usage, killed = None, None, False
        while status is None:
            pid, status_word, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                status = os.waitstatus_to_exitcode(status_word)
                break
            if time.perf_counter() - started > limit and not killed:
                os.killpg(process.pid, signal.SIGTERM)  # its own session: the server's or trainer's children too
                killed, killed_at = True, time.perf_counter()
            elif killed and time.perf_counter() - killed_at > 10:
                os.killpg(process.pid, signal.SIGKILL)
            time.sleep(0.1)
        process.returncode = status  # reaped by wait4
    peak = round(usage.ru_maxrss * 1024 / 1e9, 3) if usage is not None else None
    return (None if killed else status), time.perf_counter() - started, peak


def log_tail(path: str, lines: int = 25) -> list[str]:
    try:
        with open(path, errors="replace") as f:
            return [line.rstrip()[:300] for line in f.readlines()[-lines:]]
    except OSError:
        return []


def run_plan(steps: list[Step], logs: str, time_limit: float, on_step=None, min_left: float = 20.0) -> dict:
    """Run the steps in order; returns {name: record}. ``on_step(records)`` after each (partial results)."""
    os.makedirs(logs, exist_ok=True)
    deadline = time.monotonic() + time_limit
    records = {}
    for step in steps:
        record = {"status": "skipped", "seconds": None, "peak_gpu_GB": None, "peak_host_GB": None}
        records[step.name] = record
        blocked = [need for need in step.needs if records.get(need, {}).get("status") != "pass"]
        left = deadline - time.monotonic()
        if blocked or left < min_left:
            record["why"] = f"needs {', '.join(blocked)}" if blocked else f"no time left ({left:.0f} s)"
        else:
            record.update(run_step(step, min(step.limit, left), os.path.join(logs, f"{step.name}.log")))
        print(f"== {step.name}: {record['status']}" + (f" in {record['seconds']:.1f} s" if record["seconds"] else "")
              + (f" ({record['why']})" if record.get("why") else ""), flush=True)
        if on_step is not None:
            on_step(records)
    return records


def run_step(step: Step, limit: float, log_path: str) -> dict:
    record = {"limit_s": round(limit, 1), "log": log_path}
    if step.command:
        record["command"] = shlex.join(step.command)
    gpu = GpuMemory()
    started = time.perf_counter()
    try:
        if step.function is not None:
            details, status, host = step.function(limit, log_path), 0, None
        else:
            status, _, host = run_command(step.command, limit, log_path)
            details = {}
        record.update(seconds=round(time.perf_counter() - started, 2), peak_host_GB=host)
        if status is None:
            record.update(status="timeout", why=f"killed at the limit of {limit:.0f} s")
        elif status != 0:
            record.update(status="fail", why=f"exit status {status}")
        else:
            details.update(step.check(record) if step.check else {})
            record.update(status="pass", details=details)
    except Exception as error:  # a step's failure is recorded, the chain goes on with what does not need it
        record.update(status="fail", why=f"{type(error).__name__}: {error}",
                      seconds=round(time.perf_counter() - started, 2))
    record["peak_gpu_GB"] = gpu.stop()
    if record["status"] != "pass":
        record["log_tail"] = log_tail(log_path)
    return record


# ---- the steps ----------------------------------------------------------------------------------------------
def read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def check_write(report: str) -> Callable[[dict], dict]:
    def check(record):
        summary = read_json(report)
        return {key: summary[key] for key in ("bytes", "seconds", "disk_s", "write_GB_per_s", "peak_host_GB",
                                              "files")}
    return check


def check_load(report: str) -> Callable[[dict], dict]:
    def check(record):
        summary = read_json(report)
        failed = [name for name, ok in summary["checks"].items() if not ok]
        if failed:
            raise ValueError(f"checks failed: {', '.join(failed)}")
        return summary
    return check


def check_train(run: str, steps: int) -> Callable[[dict], dict]:
    def check(record):
        config = read_json(os.path.join(run, CONFIG_NAME))
        training = config.get("training") or {}
        if training.get("status") != "finished" or training.get("step") != steps:
            raise ValueError(f"training ended as {training.get('status')!r} at step {training.get('step')}")
        for name in (CONTROLLER_NAME, LORA_NAME):
            if not os.path.isfile(os.path.join(run, name)):
                raise ValueError(f"{name} was not written")
        lines = [STEP_LINE.search(line) for line in log_tail(record["log"], 400)]
        losses = [float(m.group(2)) for m in lines if m]
        if len(losses) != steps or not all(abs(loss) < float("inf") for loss in losses):
            raise ValueError(f"expected {steps} finite losses in the log, got {losses}")
        return {"losses": losses, "step_time_s": [float(m.group(3)) for m in lines if m],
                "lora_MB": round(os.path.getsize(os.path.join(run, LORA_NAME)) / 1e6, 3)}
    return check


def check_merge(merged: str) -> Callable[[dict], dict]:
    def check(record):
        info = read_json(os.path.join(merged, "merge_info.json"))
        if not info.get("merged_modules"):
            raise ValueError("merge_info.json: no module merged")
        return {"merged_modules": info["merged_modules"]}
    return check


def flight_step(server_args: list, seconds: float) -> Callable[[float, str], dict]:
    """Start ``python -m server`` with these options on loopback, fly one session for ``seconds``."""
    def flight(limit: float, log_path: str) -> dict:
        started = time.monotonic()
        ready_within = max(10.0, limit - seconds - 30)
        with server_process(*server_args, timeout=ready_within, threads=8, log_path=log_path) as url:
            ready_s = time.monotonic() - started
            world = readyz(url)["world"]
            try:
                numbers = fly(url, 1, seconds, None)
            except statistics.StatisticsError:  # bench.serving's median of no chunk times
                raise ValueError(f"the flight received no chunk in {seconds} s") from None
        if not numbers["frames_per_s_per_session"][0] or numbers["chunks"] < 1:
            raise ValueError(f"the flight received no frames ({numbers})")
        return {"ready_s": round(ready_s, 2), "world": {k: world.get(k) for k in (
            "name", "weights", "width", "height", "chunk_frames", "steps", "cfg_scale", "controller")}, **numbers}
    return flight


def build_plan(work: str, python: str = sys.executable, dtype: str = "bf16", flight_seconds: float = 10.0,
               device: str = "cuda", drop_caches: bool = False, size: dict = TRAIN_SIZE) -> list[Step]:
    fake, data, run = (os.path.join(work, name) for name in ("fake", "data", "run"))
    merged = os.path.join(work, "merged")
    report = {name: os.path.join(work, f"{name}.json") for name in ("write", "load", "reload")}
    me = [python, "-m", "bench.real_weights_steps"]
    cold = ["--drop_caches"] if drop_caches else []
    frames = ["--num_frames", str(size["frames"]), "--height", str(size["height"]), "--width", str(size["width"])]
    # info: the server logs what a user's first run prints (server_process's default is warning)
    server = ["--model_dir", fake, "--preset", "realtime", "--gradio", "0", "--log_level", "info"]
    return [
        Step("write", 150, [python, "-m", "models.fake_model_dir", fake, "--dtype", dtype, "--report",
                            report["write"]], check=check_write(report["write"])),
        Step("load", 150, [*me, "load", fake, "--device", device, "--report", report["load"], *cold],
             needs=("write",), check=check_load(report["load"])),
        Step("flight", 180, function=flight_step(server, flight_seconds), needs=("write",), info={"server": server}),
        Step("data", 60, [*me, "data", data, "--clips", str(size["clips"]), "--frames", str(size["frames"]),
                          "--height", str(size["height"]), "--width", str(size["width"])]),
        Step("train", 200, [python, "-m", "training.train", "--model_dir", fake, "--dataset_base_path", data, *frames,
                            "--lora_base_model", "dit", "--max_steps", "2", "--log_steps", "1", "--output_path", run],
             needs=("write", "data"), check=check_train(run, 2)),
        Step("merge", 120, [python, "-m", "training.merge_lora", "--model_dir", fake, "--lora_path", run,
                            "--output_dir", merged], needs=("train",), check=check_merge(merged)),
        Step("reload", 150, [*me, "load", merged, "--device", device, "--report", report["reload"], "--compare",
                             fake], needs=("merge",), check=check_load(report["reload"])),
    ]


# ---- the result ---------------------------------------------------------------------------------------------
def figures(records: dict) -> list[dict]:
    out = []
    for name, record in records.items():
        for key, unit in (("seconds", "s"), ("peak_gpu_GB", "GB"), ("peak_host_GB", "GB")):
            if isinstance(record.get(key), (int, float)):
                out.append(figure(f"{name}.{key}", record[key], unit))
    details = {name: record.get("details") or {} for name, record in records.items()}
    write = details.get("write", {})
    if write.get("bytes"):
        out.append(figure("write.size_GB", round(write["bytes"] / 1e9, 3), "GB"))
        out.append(figure("write.disk_s", write["disk_s"], "s", note=f"write + fsync: {write['write_GB_per_s']} GB/s"))
    for name in ("load", "reload"):
        if details.get(name, {}).get("load_s") is not None:
            out.append(figure(f"{name}.from_model_dir_s", details[name]["load_s"], "s"))
    train = details.get("train", {})
    if train.get("step_time_s"):
        out.append(figure("train.step_time_s", train["step_time_s"][-1], "s", note="the last of the optimizer steps"))
    flight = details.get("flight", {})
    if flight.get("chunks"):
        out += [figure("flight.ready_s", flight["ready_s"], "s", note="server start: load + warm-up"),
                figure("flight.chunk_ms_median", flight["chunk_ms_median"], "ms"),
                figure("flight.frames_per_s", flight["frames_per_s_per_session"][0], "frames/s")]
    statuses = [record["status"] for record in records.values()]
    return out + [figure("steps_passed", statuses.count("pass"), "count"),
                  figure("steps_not_passed", len(statuses) - statuses.count("pass"), "count")]


def device_description(kind: str) -> dict:
    """From nvidia-smi on a GPU (the driver holds no CUDA context, so the steps' memory is theirs alone)."""
    if kind == "cuda" and shutil.which("nvidia-smi"):
        names = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                               text=True).stdout.split("\n")
        names = [name.strip() for name in names if name.strip()]
        if names:
            return {"name": names[0], "kind": "cuda", "count": len(names), "threads": None}
    return describe_device("cpu")


def describe(step: Step) -> str:
    if step.command:
        return shlex.join(step.command)
    if "server" in step.info:
        return f"python -m server {shlex.join(step.info['server'])}, flown here by a WebSocket client (bench.serving)"
    return step.name


def filesystem_of(path: str) -> Optional[str]:
    """The type of the filesystem holding ``path`` (tmpfs means the "disk" is memory), from /proc/mounts."""
    path, best = os.path.realpath(path), ("", None)
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 2 and (path == parts[1] or path.startswith(parts[1].rstrip("/") + "/")) \
                        and len(parts[1]) >= len(best[0]):
                    best = (parts[1], parts[2])
    except OSError:
        pass
    return best[1]


def prepare_work(work: str) -> None:
    """A new or empty folder, or one this bench made before (cleared); anything else is refused."""
    if os.path.isdir(work) and os.listdir(work):
        if not os.path.isfile(os.path.join(work, MARKER)):
            raise ValueError(f"--work: {work!r} is not empty and was not made by this bench; name another folder")
        shutil.rmtree(work)
    os.makedirs(work, exist_ok=True)
    open(os.path.join(work, MARKER), "w").close()


def run_chain(args, argv=None) -> int:
    steps = build_plan(args.work, dtype=args.dtype, flight_seconds=args.flight_seconds, device=args.device,
                       drop_caches=args.drop_caches)
    if args.dry_run:
        for step in steps:
            print(f"{step.name}: " + describe(step))
        return 0
    prepare_work(args.work)
    device = device_description(args.device)
    settings = {"work": args.work, "dtype": args.dtype, "flight_seconds": args.flight_seconds, "device": args.device,
                "time_limit_s": args.time_limit, "drop_caches": args.drop_caches, "train_size": TRAIN_SIZE,
                "work_filesystem": filesystem_of(args.work), "plan": {step.name: describe(step) for step in steps}}

    def save(records, note=None):
        details = {"steps": records, "statuses": {name: r["status"] for name, r in records.items()}}
        write_result(args.out, "real_weights", settings, figures(records), device, details=details,
                     command=command_line("bench.real_weights", argv), note=note)

    records = run_plan(steps, os.path.join(args.work, "logs"), args.time_limit,
                       on_step=lambda partial: save(partial, "partial") if len(partial) < len(steps) else None)
    save(records)
    print(json.dumps({name: record["status"] for name, record in records.items()}))
    return 0 if all(record["status"] == "pass" for record in records.values()) else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.real_weights", description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/wanfly-real-weights", help="working folder (~33 GB: fake + merged)")
    parser.add_argument("--out", default=None, help="write the result (bench.schema) here")
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16", help="of the fake folder")
    parser.add_argument("--device", default="cuda", help="device of the load steps (the server picks cuda itself)")
    parser.add_argument("--time_limit", type=float, default=540.0, help="seconds for the whole chain")
    parser.add_argument("--flight_seconds", type=float, default=10.0)
    parser.add_argument("--drop_caches", action="store_true",
                        help="before the first load, drop the page cache (root): read the folder from disk, cold")
    parser.add_argument("--dry_run", action="store_true", help="print the steps' commands, run nothing")
    args = parser.parse_args(argv)
    stop_servers_on_sigterm()  # a server it starts stops with it
    try:
        return run_chain(args, argv)
    except ValueError as error:
        parser.error(str(error))


if __name__ == "__main__":
    sys.exit(main())
