"""The files of ``training.evaluate --long_flight``: ``report.json``, ``summary.md``, ``windows.png`` (the per-window
curves, worlds side by side) and ``frames.png`` (scene 0: the true flight and each world's, at the end of each
window). The measures are defined in ``training.evaluation.long_flight_scores``.

``report.json``: ``kind`` ("long_flight"), ``seconds``, ``window_seconds``, ``edge_seconds``, ``turn_degrees``,
``scenes``, ``seed``, ``definitions``, ``comparison`` (one row per world), ``worlds`` (per world: ``windows``,
``drift``, ``vae_drift``, ``edges``, ``overall``, ``out_and_back``, ``goals``, ``serve``, ``magnitudes``, ``scenes``,
``generation_seconds_per_video_second``), ``settings`` (the optical-flow settings), ``notes``, ``files``.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
from PIL import Image

from training.evaluation.long_flight import LONG_SECONDS, TURN_DEGREES, WINDOW_SECONDS, run_long_flight
from training.evaluation.long_flight_scores import GOAL_DRIFT, GOAL_EDGE_DROP

DEFINITIONS = {
    "accuracy": "action-following accuracy (mean per-action balanced accuracy, 0.5 = ignores its actions) of the "
                "window's intervals pooled over scenes; truth_accuracy: the estimator's own on the true video",
    "psnr_db": "PSNR of each generated frame to the true frame of the same index, averaged over the window's frames "
               "and the scenes",
    "sharpness_ratio": "generated / true sharpness (variance of the 4-neighbour Laplacian of the luma): per scene the "
                       "ratio of the window's means, averaged over scenes; 1 = as sharp as the truth",
    "palette_distance": "total-variation distance of the RGB histograms (8 bins per channel) of each generated frame "
                        "and its true frame (0 = same colours, 1 = none in common), averaged",
    "vae_*": "the same for the true video through the world's VAE, decoded as the world decodes (chunked: chunk by "
             "chunk; causal: one decode that never restarts): the world's ceiling",
    "drift": "(best - worst) / best over the windows of a higher-is-better score, 0 = steady: accuracy, psnr_db, "
             "sharpness agreement min(r, 1/r) of the ratio r, palette similarity 1 - palette_distance",
    "edges": "accuracy of the first vs the last edge_seconds of the flight, pooled over scenes; change = last - first",
    "out_and_back": "yaw turn_degrees right then left, forward then back for as long; return_psnr_db: the frame after "
                    "returning vs the flight's start frame; far_psnr_db: the frame at the far point vs the start",
    "goals": f"sharpness and palette drift <= {GOAL_DRIFT}; last-edge accuracy >= first-edge accuracy - "
             f"{GOAL_EDGE_DROP}",
}
CURVES = (("accuracy", "action-following accuracy"), ("psnr_db", "PSNR to truth (dB)"),
          ("sharpness_ratio", "sharpness generated / true"), ("palette_distance", "colour-histogram distance"))


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _yes(value) -> str:
    return "n/a" if value is None else ("yes" if value else "**no**")


def comparison_rows(entries: list[dict]) -> list[dict]:
    return [{"label": e["label"], "generation": e["generation"], "accuracy": e["overall"]["accuracy"],
             "first_accuracy": e["edges"]["first_accuracy"], "last_accuracy": e["edges"]["last_accuracy"],
             "change": e["edges"]["change"], "drift": e["drift"], "vae_drift": e["vae_drift"],
             "psnr_db": e["overall"]["psnr_db"], "vae_psnr_db": e["overall"]["vae_psnr_db"],
             "return_psnr_db": {n: v["generated"]["return_psnr_db"] for n, v in e["out_and_back"].items()},
             "goals": e["goals"]} for e in entries]


def write_long_flight_report(out, entries: list[dict], pictures: dict, meta: dict, settings: dict,
                             notes: list[str]) -> dict:
    """Write report.json, summary.md, windows.png and frames.png under ``out``; returns the report."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = ["report.json", "summary.md", plot_windows(out / "windows.png", entries),
             frame_sheet(out / "frames.png", entries, pictures)]
    report = {"kind": "long_flight", **meta, "definitions": DEFINITIONS, "comparison": comparison_rows(entries),
              "worlds": entries, "settings": settings, "notes": notes, "files": files + ["videos/"]}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "summary.md").write_text(summary_markdown(report))
    return report


def summary_markdown(report: dict) -> str:
    edge = _fmt(report["edge_seconds"], 0)
    lines = ["# Long flights against ground truth", "",
             f"{report['seconds']:g} s flights from {report['scenes']} held-out synthetic scenes (seed "
             f"{report['seed']}), windows of {report['window_seconds']:g} s; generated frame i vs the renderer's "
             "frame i of the same actions.", "", "## Side by side", "",
             f"| world | generation | accuracy | first {edge} s | last {edge} s | change | drift accuracy | "
             "drift PSNR | drift sharpness | drift palette | PSNR dB | VAE: PSNR dB, drift sharpness, palette | "
             "yaw return dB | forward return dB |", "|---" * 14 + "|"]
    for row in report["comparison"]:
        d, r, v = row["drift"], row["return_psnr_db"], row["vae_drift"]
        lines.append(f"| {row['label']} | {row['generation']} | {_fmt(row['accuracy'])} | "
                     f"{_fmt(row['first_accuracy'])} | {_fmt(row['last_accuracy'])} | {_fmt(row['change'])} | "
                     f"{_fmt(d['accuracy'])} | {_fmt(d['psnr_db'])} | {_fmt(d['sharpness'])} | {_fmt(d['palette'])} | "
                     f"{_fmt(row['psnr_db'], 2)} | {_fmt(row['vae_psnr_db'], 2)}, {_fmt(v['sharpness'])}, "
                     f"{_fmt(v['palette'])} | {_fmt(r['yaw'], 2)} | {_fmt(r['forward'], 2)} |")
    lines += ["", "## Goals", "", f"| world | sharpness drift <= {GOAL_DRIFT} | palette drift <= {GOAL_DRIFT} | "
              f"last {edge} s accuracy >= first - {GOAL_EDGE_DROP} |", "|---|---|---|---|"]
    for row in report["comparison"]:
        g = row["goals"]
        lines.append(f"| {row['label']} | {_yes(g['sharpness_drift_within_15pct'])} | "
                     f"{_yes(g['palette_drift_within_15pct'])} | {_yes(g['last_accuracy_within_0.05_of_first'])} |")
    lines += ["", "## Out and back", "", "| world | flight | generated: return dB | generated: far dB | "
              "true: return dB | true: far dB |", "|---|---|---|---|---|---|"]
    for entry in report["worlds"]:
        for name, sides in entry["out_and_back"].items():
            g, t = sides["generated"], sides["truth"]
            lines.append(f"| {entry['label']} | {name} | {_fmt(g['return_psnr_db'], 2)} | {_fmt(g['far_psnr_db'], 2)} "
                         f"| {_fmt(t['return_psnr_db'], 2)} | {_fmt(t['far_psnr_db'], 2)} |")
    for entry in report["worlds"]:
        lines += ["", f"## {entry['label']} ({entry['generation']}, {entry['world']}) per window", "",
                  "| window (s) | intervals | accuracy | truth accuracy | PSNR dB | sharpness ratio | "
                  "palette distance | VAE: PSNR dB | VAE: sharpness ratio | VAE: palette distance |",
                  "|---" * 10 + "|"]
        for w in entry["windows"]:
            lines.append(f"| {w['start_s']:g}-{w['end_s']:g} | {w['intervals']} | {_fmt(w['accuracy'])} | "
                         f"{_fmt(w['truth_accuracy'])} | {_fmt(w['psnr_db'], 2)} | {_fmt(w['sharpness_ratio'])} | "
                         f"{_fmt(w['palette_distance'])} | {_fmt(w['vae_psnr_db'], 2)} | "
                         f"{_fmt(w['vae_sharpness_ratio'])} | {_fmt(w['vae_palette_distance'])} |")
        per_action = ", ".join(f"{n} {_fmt(v, 2)}" for n, v in entry["overall"]["per_action"].items())
        lines += ["", f"whole flight: accuracy {_fmt(entry['overall']['accuracy'])} (p = "
                      f"{_fmt(entry['overall']['p_value'])}, {entry['overall']['intervals']} intervals); per action: "
                      f"{per_action}; generation {_fmt(entry['generation_seconds_per_video_second'], 2)} s per "
                      "second of video"]
    lines += ["", "## Definitions", ""] + [f"- **{k}**: {v}" for k, v in report["definitions"].items()]
    if report["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    lines += [""] + [f"![{f}]({f})" for f in report["files"] if f.endswith(".png")]
    return "\n".join(lines) + "\n"


def plot_windows(path: Path, entries: list[dict]) -> str:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    for ax, (key, title) in zip(axes.flat, CURVES):
        for k, entry in enumerate(entries):
            ends = [w["end_s"] for w in entry["windows"]]
            values = [np.nan if w[key] is None else w[key] for w in entry["windows"]]
            ax.plot(ends, values, "o-", color=f"C{k}", label=f"{entry['label']} ({entry['generation']})")
            other, name = ("truth_accuracy", "true video") if key == "accuracy" else ("vae_" + key, "its VAE")
            ax.plot(ends, [np.nan if w[other] is None else w[other] for w in entry["windows"]], ":", color=f"C{k}",
                    label=f"{entry['label']}: {name}")
        if key == "sharpness_ratio":
            ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("end of window (s)")
    axes[0, 0].legend(fontsize=7)
    axes[0, 1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path.name


def frame_sheet(path: Path, entries: list[dict], pictures: dict, tile: int = 96) -> str:
    """Scene 0: one row for the true flight, one per world; columns: frame 0, then the last frame of each window."""
    first = entries[0]
    ends = [0] + [int(round(w["end_s"] * first["serve"]["fps"])) for w in first["windows"]]
    rows = [pictures[first["label"]]["truth"]] + [pictures[e["label"]]["frames"] for e in entries]
    sheet = np.zeros((tile * len(rows), tile * len(ends), 3), dtype=np.uint8)
    for r, video in enumerate(rows):
        for c, index in enumerate(ends):
            frame = Image.fromarray(video[min(index, len(video) - 1)]).resize((tile, tile))
            sheet[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] = np.asarray(frame)
    Image.fromarray(sheet).save(path)
    return path.name


def report_long_flights(args, settings) -> dict:
    """``--long_flight``: fly every world (``run_long_flight``), then write the report under ``args.out``."""
    entries, pictures = run_long_flight(args, settings)
    seconds = args.seconds or LONG_SECONDS
    meta = {"seconds": seconds, "window_seconds": args.window_seconds or WINDOW_SECONDS,
            "edge_seconds": entries[0]["edges"]["seconds"], "turn_degrees": args.turn_degrees or TURN_DEGREES,
            "scenes": args.scenes, "seed": args.seed}
    notes = [f"{e['label']}: {e['windows'][0]['intervals']} intervals per window over {args.scenes} scene(s): a "
             "window's accuracy carries a sampling error of several hundredths at this size" for e in entries]
    notes += [f"{e['label']}: commanded magnitudes (raw units per interval, the world's suite magnitudes): "
              + ", ".join(f"{n} {m:g}" for n, m in e["magnitudes"].items()) for e in entries]
    return write_long_flight_report(args.out, entries, pictures, meta, dataclasses.asdict(settings), notes)


def long_flight_lines(report: dict) -> list[str]:
    """One line per world for the terminal."""
    lines = []
    for row in report["comparison"]:
        d, edge = row["drift"], _fmt(report["edge_seconds"], 0)
        lines.append(f"{row['label']} ({row['generation']}): accuracy {_fmt(row['accuracy'])}, first/last {edge} s "
                     f"{_fmt(row['first_accuracy'])}/{_fmt(row['last_accuracy'])}; drift sharpness "
                     f"{_fmt(d['sharpness'])}, palette {_fmt(d['palette'])}, PSNR {_fmt(d['psnr_db'])}; PSNR "
                     f"{_fmt(row['psnr_db'], 2)} dB; out-and-back return yaw {_fmt(row['return_psnr_db']['yaw'], 2)}"
                     f" dB, forward {_fmt(row['return_psnr_db']['forward'], 2)} dB")
    return lines
