"""Start and stop local Flower processes (SuperLink, SuperNodes) and submit runs with `flwr run`.

Used by `splitkd simulate`, the deployment test and the benchmarks. Every process is
started in its own session so that stopping it also stops what it spawned (SuperExec,
ClientApp processes, Ray), and only processes this module started are ever stopped.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from splitkd_flwr.core.errors import SplitKDError

_BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flower_env(home: Path, threads: int | None = None) -> dict[str, str]:
    """Environment for Flower processes: a private FLWR_HOME, no runtime pip installs.

    ``threads`` caps each process's math threads (OMP_NUM_THREADS), for runs that put a
    server and several clients on one machine.
    """
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    env["FLWR_HOME"] = str(home)
    # Flower starts its helpers (flower-superexec, flwr-clientapp) by name from PATH.
    env["PATH"] = f"{_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    env["RAY_DEDUP_LOGS"] = "0"
    # Keep Ray's current behaviour (no GPUs asked for: none hidden) and its FutureWarning off.
    env.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    return env


def toml_value(value: Any) -> str:
    """One value in TOML syntax, as `--run-config` / `--node-config` expect."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def config_arg(values: Mapping[str, Any]) -> str:
    """``{"a": 1, "b": "x"}`` -> ``'a=1 b="x"'``."""
    return " ".join(f"{k}={toml_value(v)}" for k, v in values.items())


@dataclass
class LocalFederation:
    """A SuperLink (simulation or deployment) and any SuperNodes, all started here."""

    home: Path
    simulation: bool
    threads: int | None = None  # OMP_NUM_THREADS for every process started here
    # Fleet, Control and runtime APIs (HTTP)
    http_port: int = field(default_factory=free_port)
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def address(self) -> str:
        """Where `flwr` and SuperNodes reach the SuperLink."""
        return f"127.0.0.1:{self.http_port}"

    def start(self, timeout_s: float = 60.0) -> None:
        """Start the SuperLink and wait until it answers its health check."""
        self.home.mkdir(parents=True, exist_ok=True)
        command = [
            str(_BIN / "flower-superlink"),
            "--insecure",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.http_port),
            "--database",
            str(self.home / "state.db"),
            "--disable-runtime-dependency-installation",
        ]
        if self.simulation:
            command += ["--simulation", "--isolation", "subprocess"]
        self._spawn(command, self.home / "superlink.log")
        (self.home / "config.toml").write_text(
            '[superlink]\ndefault = "splitkd"\n\n'
            f'[superlink.splitkd]\naddress = "{self.address}"\ninsecure = true\n'
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.processes[0].poll() is not None:
                raise SplitKDError(
                    f"flower-superlink exited; see {self.home / 'superlink.log'}"
                )
            try:
                if httpx.get(f"http://{self.address}/health", timeout=1.0).is_success:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise SplitKDError(f"flower-superlink did not start within {timeout_s:.0f} s")

    def add_supernode(self, node_config: Mapping[str, Any]) -> subprocess.Popen:
        """Start a SuperNode with ``node_config`` (deployment mode only)."""
        name = f"supernode-{len(self.processes)}"
        command = [
            str(_BIN / "flower-supernode"),
            "--insecure",
            "--superlink",
            self.address,
            "--port",
            str(free_port()),
            "--node-config",
            config_arg(node_config),
        ]
        return self._spawn(command, self.home / f"{name}.log")

    def run(
        self,
        app_dir: Path,
        run_config: Mapping[str, Any] | None = None,
        federation_config: Mapping[str, Any] | None = None,
        timeout_s: float | None = None,
        log_path: Path | None = None,
    ) -> int:
        """`flwr run APP splitkd --stream` until the run ends; output to stdout or ``log_path``."""
        command = [str(_BIN / "flwr"), "run", str(app_dir), "splitkd", "--stream"]
        if run_config:
            command += ["--run-config", config_arg(run_config)]
        if federation_config:
            command += ["--federation-config", config_arg(federation_config)]
        env = flower_env(self.home, self.threads)
        if log_path is None:
            return subprocess.run(command, env=env, timeout=timeout_s).returncode
        with log_path.open("ab") as log_file:
            return subprocess.run(
                command,
                env=env,
                timeout=timeout_s,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            ).returncode

    def stop(self) -> None:
        """Stop every process started here, and what each of them spawned."""
        for process in reversed(self.processes):
            _stop_group(process)
        self.processes.clear()

    def __enter__(self) -> LocalFederation:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, command: Sequence[str], log_path: Path) -> subprocess.Popen:
        with log_path.open("ab") as log_file:
            process = subprocess.Popen(
                command,
                env=flower_env(self.home, self.threads),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes.append(process)
        return process


def _stop_group(process: subprocess.Popen, grace_s: float = 10.0) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
    process.wait()
    # Children that outlived their leader (ClientApp processes, Ray workers) are still in
    # its group: kill them and wait until the group is gone (exited children are reaped
    # by init, not by us, so the group lingers for a moment).
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        time.sleep(0.1)
