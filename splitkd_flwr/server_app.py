"""The edge server's Flower ServerApp: read the run config, build the strategy, run it, report."""

from __future__ import annotations

import json
import signal
import sys
import threading
from logging import INFO
from pathlib import Path

from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from splitkd_flwr.config import RunConfig
from splitkd_flwr.dataplane import DataPlane
from splitkd_flwr.hardware.monitor import HardwareMonitor
from splitkd_flwr.report import MetricsLog, plot_rounds, print_report
from splitkd_flwr.split.evaluate import evaluate_lm
from splitkd_flwr.split.server import SplitServer
from splitkd_flwr.strategies.nodes import wait_for_nodes
from splitkd_flwr.strategies.planning import load_planner
from splitkd_flwr.strategies.selection import load_selector
from splitkd_flwr.strategies.split_kd import SplitKD
from splitkd_flwr.transport.stream import DataPlaneServer, ServerTLS
from splitkd_flwr.workspace import Workspace

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run split KD (or KOALA) for ``num-rounds`` rounds and save the result."""
    config = RunConfig.from_run_config(context.run_config)
    _exit_cleanly_on_sigterm()
    log(INFO, "splitkd-flwr run config: %s", config.to_run_config())
    if config.mode == "koala":
        from splitkd_flwr.strategies.koala import run_koala  # noqa: PLC0415 - optional mode

        run_koala(grid, config)
        return
    run_split_kd(grid, config)


def _exit_cleanly_on_sigterm() -> None:
    """Turn SIGTERM (how Flower stops a run) into SystemExit, so ``finally`` restores the GPU clock."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def run_split_kd(grid: Grid, config: RunConfig) -> Path:
    """Build every part from ``config``, run the rounds, save the student; return the output dir."""
    workspace = Workspace.load(config)
    output_dir = workspace.output_dir
    (output_dir / "run-config.json").write_text(
        json.dumps(config.to_run_config(), indent=2)
    )
    server = SplitServer(
        workspace.teacher, workspace.student, workspace.loss_fn(), config.server_lr
    )
    eval_batches = workspace.eval_batches()

    def evaluate() -> dict[str, float]:
        return evaluate_lm(server.student, eval_batches, workspace.teacher)

    initial = evaluate()
    teacher_eval = evaluate_lm(workspace.teacher, eval_batches)
    log(
        INFO,
        "initial student: perplexity %.2f; teacher: %.2f",
        initial["perplexity"],
        teacher_eval["perplexity"],
    )
    host, _, port = config.data_plane_bind.rpartition(":")
    tls = None
    if config.data_plane_certfile:
        tls = ServerTLS.from_files(
            config.data_plane_certfile, config.data_plane_keyfile
        )
    stream_server = DataPlaneServer(
        host, int(port), idle_timeout_s=config.frame_timeout_s, tls=tls
    )
    bound_address = stream_server.start()
    metrics_log = MetricsLog(output_dir)
    monitor = HardwareMonitor.from_config(
        config.server_energy_meter, config.server_clock
    )
    metrics_log.append(
        {
            "round": 0,
            "status": "initial",
            **{f"eval-{k}": v for k, v in initial.items()},
        }
    )
    try:
        strategy = SplitKD(
            config=config,
            server=server,
            data_plane=DataPlane(
                stream_server,
                config.data_plane_address or bound_address,
                config.wire_dtype,
                Path(config.data_plane_certfile).read_text() if tls else "",
            ),
            selector=load_selector(config.selector, seed=config.seed),
            planner=load_planner(
                config.planner,
                workspace.workload(),
                cut_layer=config.cut_layer,
                delay_bound_s=config.delay_bound_s or None,
                **workspace.planner_options(),
            ),
            assets=workspace.device_assets(),
            metrics_log=metrics_log,
            evaluate_fn=evaluate,
            link_fn=workspace.link_fn(),
            monitor=monitor,
        )
        wait_for_nodes(grid, config.min_nodes, config.round_timeout_s)
        result = strategy.start(
            grid, num_rounds=config.num_rounds, timeout=config.round_timeout_s
        )
    finally:
        stream_server.stop()
        monitor.close()  # restores the GPU clock it changed
    student_dir = output_dir / "student"
    server.student.save_pretrained(student_dir)
    workspace.tokenizer.save_pretrained(student_dir)
    final = metrics_log.records[-1]
    summary = {
        "initial student perplexity": initial["perplexity"],
        "final student perplexity": final.get("eval-perplexity"),
        "teacher perplexity": teacher_eval["perplexity"],
        "rounds ok / rolled back": "%d / %d"
        % (
            sum(r.get("status") == "ok" for r in metrics_log.records),
            sum(r.get("status") == "rolled-back" for r in metrics_log.records),
        ),
        "student saved to": str(student_dir),
        "metrics saved to": str(metrics_log.jsonl_path),
    }
    deployed = result.evaluate_metrics_clientapp.get(config.num_rounds)
    if deployed is not None:
        summary["deployed student perplexity on devices"] = deployed["perplexity"]
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print_report(metrics_log.records, summary)
    plot_rounds(metrics_log.records, output_dir / "rounds.png")
    return output_dir
