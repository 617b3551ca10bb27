"""`splitkd case-study`: the paper's comparison (Fig. 3, Fig. 4) on the modelled 10-vehicle scenario."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Annotated

import click
import typer
from rich.console import Console
from rich.progress import Progress

from splitkd_flwr.core.errors import SplitKDError

TRADEOFF_SLACKS = (0.0, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0)


def case_study(
    output_dir: Annotated[
        Path, typer.Option(help="where the CSV, PNGs and tables go")
    ] = Path("outputs/case-study"),
    rounds: Annotated[int, typer.Option(help="rounds per channel condition")] = 200,
    delay_slack: Annotated[
        float, typer.Option(help="bound = (1 + slack) x the round's least delay")
    ] = 0.25,
    delay_bound_s: Annotated[
        float | None, typer.Option(help="an absolute bound (s), not the slack")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="sequences per mini-batch")] = 8,
    seq_len: Annotated[int, typer.Option(help="tokens per sequence")] = 512,
    batches_per_round: Annotated[
        int, typer.Option(help="mini-batches x local epochs per round")
    ] = 10,
    selector: Annotated[
        str, typer.Option(help="device selector: name or pkg.mod:Class")
    ] = "round-robin",
    fleet: Annotated[str, typer.Option(help="fleet TOML ('' = paper Table II)")] = "",
    environment: Annotated[str, typer.Option(help="TR 38.901 'umi' or 'uma'")] = "umi",
    cqi_thresholds: Annotated[
        str, typer.Option(help="'5g-lena', 'matlab' or 'lte-awgn'")
    ] = "5g-lena",
    seed: Annotated[int, typer.Option(help="mobility and shadowing seed")] = 0,
    sweeps: Annotated[
        bool,
        typer.Option("--sweeps/--no-sweeps", help="trade-off and sensitivity runs"),
    ] = True,
    cluster_sizes: Annotated[
        str, typer.Option(help="clustered sweep over these K ('' = none)")
    ] = "1,2,3,5,10",
    cluster_passes: Annotated[
        int, typer.Option(help="passes over the fleet per K (Normal channel)")
    ] = 50,
    cluster_policy: Annotated[
        str,
        typer.Option(help="clustering: by-speed, in-order, random or pkg.mod:Class"),
    ] = "by-speed",
) -> None:
    """Run proposed vs server-only vs device-only under Good / Normal / Poor channels."""
    from splitkd_flwr.simulation import cluster_report, report
    from splitkd_flwr.simulation.case_study import (
        SENSITIVITY,
        CaseStudyConfig,
        run_case_study,
        sensitivity,
        tradeoff,
    )
    from splitkd_flwr.simulation.cluster_study import (
        run_cluster_sweep,
        sweep_summary,
        uniform_cluster_cuts,
    )
    from splitkd_flwr.simulation.scenario import ScenarioConfig

    console = Console()
    try:
        config = CaseStudyConfig(
            rounds=rounds,
            batch_size=batch_size,
            seq_len=seq_len,
            batches_per_round=batches_per_round,
            delay_slack=delay_slack,
            delay_bound_s=delay_bound_s,
            selector=selector,
            scenario=ScenarioConfig(
                fleet=fleet,
                environment=environment,
                cqi_thresholds=cqi_thresholds,
                seed=seed,
            ),
        )
        try:
            sizes = [int(k) for k in cluster_sizes.split(",") if k.strip()]
        except ValueError:
            raise click.BadParameter(
                f"--cluster-sizes must be integers separated by commas, got {cluster_sizes!r}"
            ) from None
        output_dir.mkdir(parents=True, exist_ok=True)
        sweep_rounds = max(1, min(rounds, 100))
        steps = (
            len(config.noises)
            + (len(TRADEOFF_SLACKS) + len(SENSITIVITY) if sweeps else 0)
            + len(set(sizes) | {1}) * bool(sizes)
        )
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("case study", total=steps)

            def advance(label: str) -> None:
                progress.update(task, advance=1, description=label)

            result = run_case_study(config, advance)
            if sweeps:
                fast = replace(config, rounds=sweep_rounds)
                points = tradeoff(fast, TRADEOFF_SLACKS, advance)
                sens = sensitivity(fast, on_step=advance)
            if sizes:
                cluster_rows = run_cluster_sweep(
                    config, sizes, cluster_passes, cluster_policy, on_step=advance
                )
    except SplitKDError as err:
        raise click.ClickException(str(err)) from err

    summary = result.summary()
    files = [
        report.write_csv(result.rows, output_dir / "case_study.csv"),
        report.plot_per_round(
            result,
            "delay_s",
            output_dir / "fig3_delay.png",
            "round delay (s)",
            "Training delay per round (cf. paper Fig. 3)",
        ),
        report.plot_per_round(
            result,
            "energy_j",
            output_dir / "fig4_energy.png",
            "round energy (J)",
            "Energy per round (cf. paper Fig. 4)",
        ),
    ]
    tables = [
        f"## Reductions by the proposed plan ({rounds} rounds per channel)\n",
        report.reductions_table(summary),
        "\n## Mean per round\n",
        report.means_table(summary),
    ]
    if sweeps:
        files += [
            report.write_csv(points, output_dir / "tradeoff.csv"),
            report.plot_tradeoff(points, output_dir / "tradeoff.png"),
            report.write_csv(sens, output_dir / "sensitivity.csv"),
            report.plot_sensitivity(sens, output_dir / "sensitivity.png"),
        ]
        tables += [
            f"\n## Sensitivity (Normal channel, {sweep_rounds} rounds; one parameter at a time)\n",
            report.sensitivity_table(sens),
        ]
    if sizes:
        clustered = sweep_summary(cluster_rows)
        files += [
            report.write_csv(cluster_rows, output_dir / "cluster_sweep.csv"),
            cluster_report.plot_sweep(
                clustered,
                output_dir / "cluster_sweep.png",
                f"Clustered rounds ({cluster_policy}, Normal channel, mean of "
                f"{cluster_passes} passes, {batches_per_round} batches per round)",
            ),
        ]
        tables += [
            f"\n## Clustered rounds vs K (per pass over the fleet; {cluster_policy}, "
            f"Normal channel, {cluster_passes} passes)\n",
            cluster_report.sweep_table(clustered),
            "\n## K identical AGX Orin 1.3 at 40 dB SNR (the issue's estimate)\n",
            cluster_report.uniform_table(uniform_cluster_cuts(config, sizes)),
        ]
    (output_dir / "summary.md").write_text("\n".join(tables) + "\n")
    (output_dir / "config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    files += [output_dir / "summary.md", output_dir / "config.json"]
    console.print(report.reductions_table(summary))
    console.print(f"wrote {', '.join(str(f) for f in files)}")
