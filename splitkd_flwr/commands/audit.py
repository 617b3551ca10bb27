"""`splitkd audit`: what an honest-but-curious edge server recovers from a split round."""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import torch
import typer

from splitkd_flwr.commands.simulate import _pairs
from splitkd_flwr.flower.config import RunConfig
from splitkd_flwr.privacy.audit import Finding, audit
from splitkd_flwr.split_kd.audit_run import AuditRun, run_and_capture

# A short in-process run: the fixed planner and no modelled world keep it about the data.
AUDIT_DEFAULTS = {
    "planner": "fixed",
    "scenario": "none",
    "server-clock": "none",
    "server-energy-meter": "none",
}


def audit_config(rounds: int, overrides: dict[str, object]) -> RunConfig:
    """The audited run's config: the defaults above, ``rounds`` rounds, then the overrides."""
    return RunConfig.from_run_config(
        {**AUDIT_DEFAULTS, "num-rounds": rounds, **overrides}
    )


def run_audit(
    config: RunConfig, vehicles: int, search_rows: int, search_steps: int | None
) -> tuple[AuditRun, list[Finding]]:
    """Run the short training, capture its last round, attack it."""
    with tempfile.TemporaryDirectory(prefix="splitkd-audit-") as work:
        run = run_and_capture(config, Path(work), vehicles)
    findings = audit(
        run.capture, run.knowledge, search_rows=search_rows, search_steps=search_steps
    )
    return run, findings


def findings_table(findings: list[Finding]) -> str:
    """The findings as a Markdown table."""
    rows = ["| what crosses the wire | attack | tokens recovered | detail |"]
    rows.append("|---|---|---|---|")
    for f in findings:
        rows.append(
            f"| {f.channel} | {f.attack} | {100 * f.recovered:.1f} % | {f.detail} |"
        )
    return "\n".join(rows)


def plot_findings(results: dict[str, list[Finding]], path: Path) -> Path:
    """One horizontal bar per channel and attack, one colour per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = sorted({f"{f.channel}: {f.attack}" for fs in results.values() for f in fs})
    fig, ax = plt.subplots(figsize=(10, 0.5 * len(labels) * len(results) + 1.5))
    height = 0.8 / max(len(results), 1)
    for i, (name, findings) in enumerate(results.items()):
        by_label = {f"{f.channel}: {f.attack}": f.recovered for f in findings}
        ys = [j + i * height for j in range(len(labels))]
        ax.barh(ys, [100 * by_label.get(x, 0.0) for x in labels], height, label=name)
    ax.set_yticks([j + 0.4 - height / 2 for j in range(len(labels))], labels)
    ax.set_xlabel("device tokens recovered by the server (%)")
    ax.set_xlim(0, 100)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def audit_command(
    rounds: Annotated[
        int, typer.Option(help="rounds of the short run; the last is audited")
    ] = 3,
    vehicles: Annotated[int, typer.Option(help="in-process devices")] = 2,
    search_rows: Annotated[
        int,
        typer.Option(
            help="sequences of the first mini-batch the weight search recovers "
            "(0: every sequence of every mini-batch, replaying the device's optimizer)"
        ),
    ] = 1,
    search_steps: Annotated[
        int, typer.Option(help="with --search-rows 0: mini-batches replayed (0: all)")
    ] = 0,
    output_dir: Annotated[Path, typer.Option(help="audit.json and audit.png")] = Path(
        "outputs/audit"
    ),
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="run-config key=value (repeatable)"),
    ] = None,
) -> None:
    """Run a short split-KD training in-process, capture its last round as the edge server
    sees it (data-plane frames and Flower messages), and run every attack on it."""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    started = time.monotonic()
    config = audit_config(rounds, _pairs(set_ or []))
    run, findings = run_audit(config, vehicles, search_rows, search_steps or None)
    output_dir.mkdir(parents=True, exist_ok=True)
    typer.echo(findings_table(findings))
    typer.echo(
        f"\nsplit-mode {config.split_mode}, cut {run.capture.cut_layer}: held-out "
        f"perplexity {run.initial_perplexity:.1f} -> {run.final_perplexity:.2f} after "
        f"{rounds} rounds; {run.bytes_up_per_step / 1e3:.1f} kB up, "
        f"{run.bytes_down_per_step / 1e3:.1f} kB down per mini-batch; "
        f"{time.monotonic() - started:.0f} s"
    )
    if run.device_perplexity is not None:
        typer.echo(
            f"the audited device's own student (its private layers): held-out "
            f"perplexity {run.device_perplexity:.2f}"
        )
    report = {
        "config": config.to_run_config(),
        "findings": [asdict(f) for f in findings],
        "initial perplexity": run.initial_perplexity,
        "final perplexity": run.final_perplexity,
        "device perplexity": run.device_perplexity,
        "bytes up per step": run.bytes_up_per_step,
        "bytes down per step": run.bytes_down_per_step,
    }
    (output_dir / "audit.json").write_text(json.dumps(report, indent=2))
    plot = plot_findings({config.split_mode: findings}, output_dir / "audit.png")
    typer.echo(f"report: {output_dir / 'audit.json'}, plot: {plot}")
