"""Build a split-KD run from its config: models, server, data plane, selector, planner."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flwr.serverapp import Grid

from splitkd_flwr.flower.config import RunConfig
from splitkd_flwr.flower.run import run_strategy
from splitkd_flwr.hardware.monitor import HardwareMonitor
from splitkd_flwr.simulation.planning import load_planner
from splitkd_flwr.simulation.selection import load_selector
from splitkd_flwr.split.cluster import ClusterServer
from splitkd_flwr.split.evaluate import evaluate_lm
from splitkd_flwr.split.server import SplitServer
from splitkd_flwr.split.ushape import UShapeServer
from splitkd_flwr.split_kd.cluster import ClusterSplitKD, cluster_parts
from splitkd_flwr.split_kd.dataplane import DataPlane
from splitkd_flwr.split_kd.private_layers import min_cut_layer
from splitkd_flwr.split_kd.strategy import SplitKD
from splitkd_flwr.split_kd.workspace import Workspace
from splitkd_flwr.transport.stream import DataPlaneServer, ServerTLS

logger = logging.getLogger(__name__)


def run_split_kd(grid: Grid, config: RunConfig) -> Path:
    """Run split KD for ``num-rounds`` rounds, save and deploy the student; return the output dir."""
    return run_strategy(grid, config, build_split_kd)


def split_server(config: RunConfig, workspace: Workspace) -> SplitServer:
    """The server's side of the split the run config asks for (``split-mode``)."""
    if config.split_mode == "u-shape":
        return UShapeServer(
            workspace.teacher,
            workspace.student,
            workspace.loss_fn(),
            config.server_lr,
            top_k=config.teacher_top_k,
            temperature=config.kd_temperature,
            private_layers=config.device_private_layers,
        )
    return workspace.split_server()


@contextmanager
def build_split_kd(config: RunConfig, output_dir: Path) -> Iterator[SplitKD]:
    """The strategy of a split-KD run; its data plane and GPU clock are released on exit."""
    workspace = Workspace.load(config)
    clustered = config.cluster_size > 1
    strategy, extra = SplitKD, {}
    if clustered:
        strategy, extra = ClusterSplitKD, cluster_parts(config, workspace)
        # No LoRA or bf16-mixed here: the run config refuses them with cluster-size > 1.
        server = ClusterServer(
            workspace.teacher, workspace.student, workspace.loss_fn(), config.server_lr
        )
    else:
        server = split_server(config, workspace)
    eval_batches = workspace.eval_batches()
    teacher_eval = evaluate_lm(workspace.teacher, eval_batches)
    logger.info("teacher: held-out perplexity %.2f", teacher_eval["perplexity"])
    host, _, port = config.data_plane_bind.rpartition(":")
    tls = None
    if config.data_plane_certfile:
        tls = ServerTLS.from_files(
            config.data_plane_certfile, config.data_plane_keyfile
        )
    stream_server = DataPlaneServer(
        host,
        int(port),
        idle_timeout_s=config.frame_timeout_s,
        tls=tls,
        # one thread per concurrently streaming device
        max_workers=max(4, config.cluster_size + 1),
    )
    bound_address = stream_server.start()
    monitor = HardwareMonitor.from_config(
        config.server_energy_meter, config.server_clock
    )
    try:
        yield strategy(
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
                min_cut_layer=min_cut_layer(config.device_private_layers),
                **workspace.planner_options(),
            ),
            assets=workspace.device_assets(
                None if clustered else server.device_base_state()
            ),
            evaluate_fn=lambda: evaluate_lm(
                server.student, eval_batches, workspace.teacher
            ),
            tokenizer=workspace.tokenizer,
            teacher_perplexity=teacher_eval["perplexity"],
            link_fn=workspace.link_fn(),
            monitor=monitor,
            **extra,
        )
    finally:
        stream_server.stop()
        # Restores the GPU clock it changed.
        monitor.close()
