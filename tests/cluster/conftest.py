"""The real cluster for tests/cluster/: `scripts/cluster.sh up` once per session, in a state folder of
its own (its own ports, sockets and databases: a user's `make cluster` is not touched), and `purge`
at the end, which stops exactly what this `up` started and deletes the folder. With
PIPELINE_TEST_CLUSTER_DIR set, the cluster in that folder instead, left running.

Skipped, with the reason, only where the Debian packages are missing and cannot be installed
(apt-get needs root or sudo)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import pipeline_env

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "cluster.sh"
UP_TIMEOUT_S = 900  # from nothing: apt-get, the databases' first start, MLflow's migrations


@dataclass
class Cluster:
    state: Path
    partition: str
    tracking_uri: str
    slurm_conf: str

    def env(self) -> dict[str, str]:
        """A user's shell on the cluster's login node: SLURM's commands find this cluster."""
        return {**pipeline_env(), "SLURM_CONF": self.slurm_conf}

    def slurm(self, *command: str) -> str:
        return subprocess.run(command, env=self.env(), capture_output=True, text=True, check=True, timeout=60).stdout

    def launcher(self, *settings: str) -> list[str]:
        """A sweep on this cluster's partition: one CPU and 1 GB a job (the node has few), the demo model on the CPU."""
        return ["-m", "hydra/launcher=slurm", f"hydra.launcher.partition={self.partition}",
                "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1", *settings,
                f"tracking.uri={self.tracking_uri}", "runtime.device=cpu"]

    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    # PIPELINE_TEST_CLUSTER_DIR: a cluster of your own (make cluster's state folder), brought up if it is not, and
    # left running; the tests then take a minute less each time
    given = os.environ.get("PIPELINE_TEST_CLUSTER_DIR")
    # else under /tmp, world-executable: munged refuses a socket folder others cannot enter, and pytest's are 0700
    state = Path(given) if given else Path(tempfile.mkdtemp(prefix="pipeline-cluster-test-", dir="/tmp"))
    state.chmod(0o755)
    env = {**os.environ, "PIPELINE_CLUSTER_DIR": str(state), "PYTHON": sys.executable}
    up = subprocess.run([str(SCRIPT), "up"], env=env, capture_output=True, text=True, timeout=UP_TIMEOUT_S)
    try:
        if up.returncode != 0 and "needs root" in up.stderr:
            pytest.skip(f"the cluster's Debian packages are missing and cannot be installed here: {up.stderr.strip()}")
        assert up.returncode == 0, f"scripts/cluster.sh up failed:\n{up.stderr[-3000:]}"
        values = dict(line.removeprefix("export ").split("=", 1)
                      for line in (state / "cluster.env").read_text().splitlines())
        yield Cluster(state, values["PIPELINE_CLUSTER_PARTITION"], values["PIPELINE_CLUSTER_TRACKING_URI"],
                      values["SLURM_CONF"])
    finally:
        if not given:
            subprocess.run([str(SCRIPT), "purge"], env=env, capture_output=True, timeout=120)
