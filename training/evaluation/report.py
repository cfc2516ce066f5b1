"""The files of an evaluation (``training.evaluate``): ``report.json``, ``summary.md`` and PNG plots.

``report.json`` top level: ``accuracy`` (the headline of the first entry, 0..1), ``per_action`` (name ->
precision/recall/f1/... of the first entry), ``headline`` (its definition), ``chance_accuracy``, ``near_chance``,
the first entry's other metrics, ``entries`` (every compared folder/controller: label, source, metrics, clips),
``comparison`` (one row per entry), ``settings``, ``notes`` and ``files``.
Plots: ``per_action.png`` (precision/recall/F1 bars, or F1 per entry when comparing), ``confusion.png`` (row-
normalised, one panel per entry), ``magnitudes.png`` (commanded vs estimated signed amount per axis over time for
a few clips of the first entry).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from models.action_format import ACTION_NAMES
from training.evaluation.flow import AXES
from training.evaluation.metrics import CHANCE_ACCURACY, near_chance

HEADLINE = ("action-following accuracy: mean over the 8 actions of the balanced accuracy (recall on the intervals "
            "that command the action, correct rejection on those that do not); a video that ignores its actions "
            f"scores {CHANCE_ACCURACY}")
AXIS_LABELS = {"forward": "forward (+) / back (-)", "right": "right (+) / left (-)",
               "yaw": "yaw right (+) / left (-), deg", "pitch": "pitch up (+) / down (-), deg"}
MAX_CONFUSION_PANELS = 4


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def comparison_rows(entries: list[dict]) -> list[dict]:
    rows = []
    for entry in entries:
        m = entry["metrics"]
        rows.append({"label": entry["label"], "accuracy": m["accuracy"], "exact_match": m["exact_match"],
                     "kappa": m["kappa"], "intervals": m["intervals"], "clips": len(entry["clips"]),
                     "near_chance": near_chance(m), "p_value": m["chance"]["p_value"],
                     "f1": {name: s["f1"] for name, s in m["per_action"].items()}})
    return rows


def entry_notes(entry: dict) -> list[str]:
    notes = [f"{entry['label']}: {c['name']}: {c['note']}" for c in entry["clips"] if c.get("note")]
    unreadable = sum(c["unreadable_intervals"] for c in entry["clips"])
    if unreadable:
        notes.append(f"{entry['label']}: {unreadable} interval(s) had too little reliable optical flow to read "
                     "(counted as no action)")
    if near_chance(entry["metrics"]):
        chance = entry["metrics"]["chance"]
        notes.append(f"{entry['label']}: accuracy {_fmt(entry['metrics']['accuracy'])} is near chance (estimates "
                     f"shuffled across intervals score {_fmt(chance['null_mean'])}, 95th percentile "
                     f"{_fmt(chance['null_p95'])}; p = {_fmt(chance['p_value'])}): the videos do not measurably "
                     "follow their actions")
    if entry["metrics"]["unscored_actions"]:
        notes.append(f"{entry['label']}: never commanded (left out of the headline): "
                     + ", ".join(entry["metrics"]["unscored_actions"]))
    return notes


def write_report(out, entries: list[dict], settings: dict | None = None, notes: list[str] | None = None,
                 plot_clips: int = 3) -> dict:
    """Write report.json, summary.md and the plots under ``out``; returns the report dict."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    first = entries[0]["metrics"]
    notes = list(notes or []) + [n for entry in entries for n in entry_notes(entry)]
    files = ["report.json", "summary.md"] + plot_all(out, entries, plot_clips)
    report = {"headline": HEADLINE, "accuracy": first["accuracy"], "per_action": first["per_action"],
              "chance_accuracy": CHANCE_ACCURACY, "near_chance": near_chance(first),
              **{k: v for k, v in first.items() if k not in ("accuracy", "per_action")},
              "comparison": comparison_rows(entries), "entries": entries, "settings": settings or {},
              "notes": notes, "files": files}
    (out / "report.json").write_text(json.dumps(report, indent=1, default=_json_default))
    (out / "summary.md").write_text(summary_markdown(report))
    return report


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# --------------------------------------------------------------------------------------------------- markdown
def summary_markdown(report: dict) -> str:
    lines = ["# Action-following evaluation", "",
             f"**accuracy {_fmt(report['accuracy'])}** ({report['entries'][0]['label']}): {report['headline']}.", ""]
    chance = report["chance"]
    lines += [f"Chance: estimates shuffled across intervals score {_fmt(chance['null_mean'])} (95th percentile "
              f"{_fmt(chance['null_p95'])}); permutation p = {_fmt(chance['p_value'])}"
              + (", so this score is **near chance**." if report["near_chance"] else "."), ""]
    if len(report["comparison"]) > 1:
        lines += ["## Comparison", "", "| entry | accuracy | p (chance) | exact match | kappa | clips | intervals | "
                  + " | ".join(f"F1 {n}" for n in ACTION_NAMES) + " |",
                  "|---" * (7 + len(ACTION_NAMES)) + "|"]
        for row in report["comparison"]:
            chance = " (near chance)" if row["near_chance"] else ""
            lines.append(f"| {row['label']} | {_fmt(row['accuracy'])}{chance} | {_fmt(row['p_value'])} | "
                         f"{_fmt(row['exact_match'])} | "
                         f"{_fmt(row['kappa'])} | {row['clips']} | {row['intervals']} | "
                         + " | ".join(_fmt(row["f1"][n], 2) for n in ACTION_NAMES) + " |")
        lines.append("")
    for entry in report["entries"]:
        lines += entry_markdown(entry)
    if report["notes"]:
        lines += ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""]
    lines += [f"![{f}]({f})" for f in report["files"] if f.endswith(".png")]
    return "\n".join(lines) + "\n"


def entry_markdown(entry: dict) -> list[str]:
    m = entry["metrics"]
    lines = [f"## {entry['label']}", "", f"source: {entry['source']}; {len(entry['clips'])} clips, "
             f"{m['intervals']} intervals", "",
             f"accuracy {_fmt(m['accuracy'])}; exact match {_fmt(m['exact_match'])} "
             f"(chance {_fmt(m['exact_match_chance'])}, kappa {_fmt(m['kappa'])})", "",
             "| action | precision | recall | F1 | balanced acc. | support | predicted | magnitude r |",
             "|---|---|---|---|---|---|---|---|"]
    for name, s in m["per_action"].items():
        lines.append(f"| {name} | {_fmt(s['precision'])} | {_fmt(s['recall'])} | {_fmt(s['f1'])} | "
                     f"{_fmt(s['balanced_accuracy'])} | {s['support']} | {s['predicted']} | "
                     f"{_fmt(s.get('magnitude_pearson'))} |")
    rates = ", ".join(f"{k} {_fmt(v)}" for k, v in m["confusion_rates"].items())
    lines += ["", f"confusion rates (share of the pair's commanded intervals read as the other side): {rates}", ""]
    if m["magnitude"]:
        axes = ", ".join(f"{axis} r={_fmt(v['pearson'])} gain={_fmt(v['gain'], 2)}"
                         for axis, v in m["magnitude"]["axes"].items())
        lines += [f"magnitudes (commanded vs estimated signed amount): {axes}", ""]
    return lines


# ------------------------------------------------------------------------------------------------------ plots
def plot_all(out: Path, entries: list[dict], plot_clips: int) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    files = [plot_per_action(out / "per_action.png", entries), plot_confusion(out / "confusion.png", entries)]
    clips = [c for c in entries[0]["clips"] if c["steps"] > 0][:plot_clips]
    if clips:
        files.append(plot_magnitudes(out / "magnitudes.png", clips, entries[0]["label"]))
    return files


def plot_per_action(path: Path, entries: list[dict]) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 3.8))
    positions = np.arange(len(ACTION_NAMES))
    if len(entries) == 1:
        series = [(key, [s[key] for s in entries[0]["metrics"]["per_action"].values()])
                  for key in ("precision", "recall", "f1")]
        title = f"{entries[0]['label']}: accuracy {_fmt(entries[0]['metrics']['accuracy'])}"
    else:
        series = [(f"{e['label']} ({_fmt(e['metrics']['accuracy'])})", [s["f1"] for s in e["metrics"]["per_action"]
                                                                        .values()]) for e in entries]
        title = "F1 per action (legend: accuracy)"
    width = 0.8 / len(series)
    for k, (label, values) in enumerate(series):
        ax.bar(positions + (k - (len(series) - 1) / 2) * width, [np.nan if v is None else v for v in values],
               width, label=label)
    ax.set_xticks(positions, ACTION_NAMES, rotation=20)
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


def plot_confusion(path: Path, entries: list[dict]) -> str:
    import matplotlib.pyplot as plt

    shown = entries[:MAX_CONFUSION_PANELS]
    fig, axes = plt.subplots(1, len(shown), figsize=(5.2 * len(shown), 4.8), squeeze=False)
    for ax, entry in zip(axes[0], shown):
        labels, counts = entry["metrics"]["confusion"]["labels"], np.asarray(entry["metrics"]["confusion"]["counts"])
        share = counts / np.maximum(counts.sum(1, keepdims=True), 1)  # (9, 9) row-normalised
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i, j in zip(*np.nonzero(counts)):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if share[i, j] > 0.6 else "black")
        ax.set_xticks(range(len(labels)), labels, rotation=60, fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set_xlabel("estimated")
        ax.set_ylabel("commanded")
        ax.set_title(entry["label"], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


def plot_magnitudes(path: Path, clips: list[dict], label: str) -> str:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(AXES), len(clips), figsize=(4 * len(clips), 7), squeeze=False, sharex="col")
    for col, clip in enumerate(clips):
        commanded, estimated = np.asarray(clip["commanded"]), np.asarray(clip["estimated"])  # (T, 4) each
        steps = np.arange(len(commanded))
        for row, axis in enumerate(AXES):
            ax = axes[row, col]
            ax.step(steps, commanded[:, row], where="mid", label="commanded", color="black")
            ax.plot(steps, estimated[:, row], "o-", ms=3, label="estimated", color="tab:orange")
            ax.axhline(0, color="grey", lw=0.5)
            if col == 0:
                ax.set_ylabel(AXIS_LABELS[axis], fontsize=7)
        axes[0, col].set_title(f"{label}: {clip['name']}", fontsize=8)
        axes[-1, col].set_xlabel("interval (4 frames)")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


def entry_labels(labels: list[str] | None, defaults: list[str]) -> list[str]:
    """``labels`` where given, else the defaults; made unique (a suffix -2, -3, ...): they also name folders."""
    chosen = [labels[k] if labels and k < len(labels) else d for k, d in enumerate(defaults)]
    unique = []
    for label in chosen:
        name, count = label, 1
        while name in unique:
            count += 1
            name = f"{label}-{count}"
        unique.append(name)
    return unique
