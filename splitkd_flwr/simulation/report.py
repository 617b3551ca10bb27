"""The case study's outputs: CSV, the paper's Fig. 3 / Fig. 4 analogues, trade-off, tables."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# no pyplot: no global backend state, renders with Agg
from matplotlib.figure import Figure

from splitkd_flwr.simulation.case_study import (
    METHODS,
    PAPER_REDUCTIONS,
    CaseStudyResult,
)

COLOURS = {
    "proposed": "tab:green",
    "server-only": "tab:blue",
    "device-only": "tab:orange",
}
LABELS = {
    "delay_vs_server_only": "delay vs server-only",
    "energy_vs_server_only": "energy vs server-only",
    "energy_vs_device_only": "energy vs device-only",
}


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Write ``rows`` (dicts with the same keys) as CSV."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def plot_per_round(
    result: CaseStudyResult, key: str, path: Path, ylabel: str, title: str
) -> Path:
    """Mean per round under each condition (bars, 25-75 % whiskers) and the per-round trace."""
    noises = result.config.noises
    fig = Figure(figsize=(11, 4), layout="constrained")
    bars, trace = fig.subplots(1, 2, width_ratios=(1, 2))
    width = 0.8 / len(METHODS)
    for i, method in enumerate(METHODS):
        values = [result.column(key, n, method) for n in noises]
        mean = np.array([v.mean() for v in values])
        low, high = (np.array([np.percentile(v, q) for v in values]) for q in (25, 75))
        x = np.arange(len(noises)) + (i - 1) * width
        bars.bar(
            x,
            mean,
            width,
            color=COLOURS[method],
            label=method,
            yerr=[np.maximum(mean - low, 0), np.maximum(high - mean, 0)],
            capsize=3,
        )
        shown = "normal" if "normal" in noises else noises[0]
        series = result.column(key, shown, method)[:60]
        trace.plot(
            np.arange(1, len(series) + 1),
            series,
            color=COLOURS[method],
            lw=1.2,
            label=method,
        )
    bars.set_xticks(np.arange(len(noises)), [n.capitalize() for n in noises])
    bars.set_ylabel(ylabel)
    bars.set_title("mean per round (whiskers: 25-75 %)")
    bars.legend()
    trace.set_yscale("log")
    trace.set_xlabel("round")
    trace.set_ylabel(ylabel)
    trace.set_title(
        f"per round, {shown.capitalize()} channel (first {len(series)} rounds)"
    )
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    return path


def plot_tradeoff(points: Sequence[dict[str, float]], path: Path) -> Path:
    """Mean energy against mean delay of the proposed plan as the bound loosens; baselines as markers."""
    fig = Figure(figsize=(6.5, 4.5), layout="constrained")
    ax = fig.subplots()
    for noise, marker in zip(("good", "normal", "poor"), ("o", "s", "^")):
        pts = [p for p in points if p["noise"] == noise]
        if not pts:
            continue
        ax.plot(
            [p["delay_s"] for p in pts],
            [p["energy_j"] for p in pts],
            marker=marker,
            color="tab:green",
            alpha=0.5 + 0.25 * (marker == "s"),
            label=f"proposed, {noise}",
        )
        for p in pts[:1]:
            ax.scatter(
                p["server_only_delay_s"],
                p["server_only_energy_j"],
                marker=marker,
                color="tab:blue",
            )
            ax.scatter(
                p["device_only_delay_s"],
                p["device_only_energy_j"],
                marker=marker,
                color="tab:orange",
            )
        for p in pts:
            ax.annotate(
                f"{p['slack']:g}",
                (p["delay_s"], p["energy_j"]),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
    ax.scatter([], [], color="tab:blue", label="server-only")
    ax.scatter([], [], color="tab:orange", label="device-only")
    ax.set_xscale("log")
    ax.set_xlabel("mean round delay (s)")
    ax.set_ylabel("mean round energy (J)")
    ax.set_title("Energy vs delay bound (labels: slack over the least delay)")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    return path


def plot_sensitivity(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """The three reductions as each parameter moves alone (one panel per parameter)."""
    params = list(dict.fromkeys(r["parameter"] for r in rows))
    fig = Figure(figsize=(3.0 * len(params), 3.2), layout="constrained")
    axes = fig.subplots(1, len(params), sharey=True)
    for ax, param in zip(np.atleast_1d(axes), params):
        pts = [r for r in rows if r["parameter"] == param]
        for key, label in LABELS.items():
            ax.plot(
                [str(p["value"]) for p in pts],
                [100 * p[key] for p in pts],
                marker="o",
                label=label,
            )
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_title(param, fontsize=9)
    np.atleast_1d(axes)[0].set_ylabel("reduction by proposed (%)")
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.savefig(path, dpi=110)
    return path


def reductions_table(summary: dict[str, dict[str, float]]) -> str:
    """Markdown: our reductions per condition beside the paper's."""
    head = (
        "| channel | "
        + " | ".join(f"{v} (ours) | (paper)" for v in LABELS.values())
        + " |"
    )
    lines = [head, "|" + "---|" * (1 + 2 * len(LABELS))]
    for noise, s in summary.items():
        cells = " | ".join(
            f"{100 * s[k]:+.1f} % | >= {100 * PAPER_REDUCTIONS[k]:.0f} %"
            for k in LABELS
        )
        lines.append(f"| {noise.capitalize()} | {cells} |")
    return "\n".join(lines)


def means_table(summary: dict[str, dict[str, float]]) -> str:
    """Markdown: mean delay and energy per round of each method."""
    lines = [
        "| channel | "
        + " | ".join(f"{m} delay (s) | {m} energy (kJ)" for m in METHODS)
        + " | proposed mean cut | infeasible rounds |",
        "|" + "---|" * (3 + 2 * len(METHODS)),
    ]
    for noise, s in summary.items():
        cells = " | ".join(
            f"{s[f'{m}_delay_s']:.1f} | {s[f'{m}_energy_j'] / 1e3:.2f}" for m in METHODS
        )
        lines.append(
            f"| {noise.capitalize()} | {cells} | {s['proposed_mean_cut']:.2f} "
            f"| {s['infeasible_rounds']:.0f} |"
        )
    return "\n".join(lines)


def sensitivity_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown: the reductions per swept value."""
    lines = [
        "| parameter | value | " + " | ".join(LABELS.values()) + " |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['parameter']} | {r['value']} | "
            + " | ".join(f"{100 * r[k]:+.1f} %" for k in LABELS)
            + " |"
        )
    return "\n".join(lines)
