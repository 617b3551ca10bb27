"""The clustered sweep's outputs: delay, energy and cut per pass over the fleet vs K."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

# no pyplot: no global backend state, renders with Agg
from matplotlib.figure import Figure

COLOURS = {
    "proposed-clustered": "tab:green",
    "proposed-sequential": "tab:olive",
    "server-only": "tab:blue",
    "device-only": "tab:orange",
    "least-delay": "tab:purple",
}
SHOWN = ("proposed-clustered", "proposed-sequential", "server-only", "device-only")


def _series(summary: Sequence[dict[str, Any]], method: str, key: str):
    pts = sorted((s["cluster_size"], s[key]) for s in summary if s["method"] == method)
    return [k for k, _ in pts], [v for _, v in pts]


def plot_sweep(summary: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    """Three panels vs K: delay per pass, energy per pass, and the cut chosen."""
    fig = Figure(figsize=(13, 4), layout="constrained")
    delay, energy, cut = fig.subplots(1, 3)
    for method in SHOWN:
        for ax, key, scale in ((delay, "delay_s", 1.0), (energy, "energy_j", 1e-3)):
            ks, values = _series(summary, method, key)
            ax.plot(
                ks,
                [v * scale for v in values],
                marker="o",
                color=COLOURS[method],
                label=method,
            )
    for method, label in (
        ("proposed-clustered", "energy-optimal (mean)"),
        ("least-delay", "least-delay (mean)"),
    ):
        ks, values = _series(summary, method, "mean_cut")
        cut.plot(ks, values, marker="o", color=COLOURS[method], label=label)
        ks, values = _series(summary, method, "max_cut")
        cut.plot(
            ks,
            values,
            ls="--",
            marker=".",
            color=COLOURS[method],
            label=label.replace("mean", "largest"),
        )
    delay.set_ylabel("delay per pass over the fleet (s)")
    energy.set_ylabel("energy per pass over the fleet (kJ)")
    cut.set_ylabel("cut layer (of 16)")
    cut.set_ylim(0, 16)
    for ax in (delay, energy, cut):
        ax.set_xlabel("cluster size K")
        ax.set_xticks(sorted({s["cluster_size"] for s in summary}))
    delay.legend(fontsize=8)
    cut.legend(fontsize=8)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    return path


def sweep_table(summary: Sequence[dict[str, Any]]) -> str:
    """Markdown: per K, delay / energy per pass of each method and the cuts chosen."""
    sizes = sorted({s["cluster_size"] for s in summary})
    at = {(s["cluster_size"], s["method"]): s for s in summary}
    lines = [
        "| K | "
        + " | ".join(f"{m} delay (s) / energy (kJ)" for m in SHOWN)
        + " | cut: energy-optimal mean (largest) | cut: least-delay mean (largest) |",
        "|" + "---|" * (3 + len(SHOWN)),
    ]
    for k in sizes:
        cells = " | ".join(
            f"{at[k, m]['delay_s']:.0f} / {at[k, m]['energy_j'] / 1e3:.1f}"
            for m in SHOWN
        )
        p, q = at[k, "proposed-clustered"], at[k, "least-delay"]
        lines.append(
            f"| {k} | {cells} | {p['mean_cut']:.2f} ({p['max_cut']}) "
            f"| {q['mean_cut']:.2f} ({q['max_cut']}) |"
        )
    return "\n".join(lines)


def uniform_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown: the least-delay cut of K identical devices, and what it saves over cut 1."""
    lines = [
        "| batches per round | K | least-delay cut | delay at cut 1 (s) | least delay (s) "
        "| saved | energy-optimal cut |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        saved = 1 - r["least_delay_s"] / r["delay_at_cut_1_s"]
        lines.append(
            f"| {r['batches_per_round']} | {r['cluster_size']} | {r['least_delay_cut']} "
            f"| {r['delay_at_cut_1_s']:.0f} | {r['least_delay_s']:.0f} | {100 * saved:.1f} % "
            f"| {r['energy_optimal_cut']} |"
        )
    return "\n".join(lines)
