"""Multi-process training on torch.distributed with the gloo backend on 127.0.0.1.

Two worker processes (``_dist_worker.py``) train a model containing HandLSTM for a few SGD steps
in float64, each on half of a fixed batch. With a mean-reduced loss, DDP's gradient averaging
equals full-batch training in one process, so the parameters must agree on both ranks (exactly)
and with a single-process run over the full batch (to float64 rounding). FSDP2 (``fully_shard``)
is run the same way. Each launch is bounded in time and its processes are killed on the way out.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ._dist_worker import Model, train

WORKER = Path(__file__).with_name("_dist_worker.py")
WORLD = 2
TIMEOUT_S = 120

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="torch.distributed with gloo is not available in this build",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch(tmp_path: Path) -> list[dict]:
    """Run WORLD ranks of the worker; return each rank's result dict (one entry per mode)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    outs = [tmp_path / f"rank{rank}.pt" for rank in range(WORLD)]
    port = str(free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(rank), str(WORLD), port, str(out)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for rank, out in enumerate(outs)
    ]
    logs = []
    try:
        for proc in procs:
            log, _ = proc.communicate(timeout=TIMEOUT_S)
            logs.append(log.decode(errors="replace")[-3000:])
    finally:
        for proc in procs:  # on a timeout or any failure: no process outlives the test
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    for proc, log in zip(procs, logs, strict=True):
        assert proc.returncode == 0, f"worker exited with {proc.returncode}:\n{log}"
    return [torch.load(out, weights_only=True) for out in outs]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    return launch(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def single() -> dict[str, torch.Tensor]:
    return train("single", 0, 1)


def assert_trained_like_one_process(results: list[dict], single: dict) -> None:
    for rank, result in enumerate(results):
        assert "error" not in result, f"rank {rank}: {result.get('trace', result)}"
    rank0, rank1 = (r["params"] for r in results)
    assert list(rank0) == list(single)
    for name in single:
        assert torch.equal(rank0[name], rank1[name]), f"{name} differs between ranks"
        torch.testing.assert_close(rank0[name], single[name], rtol=1e-10, atol=1e-10, msg=name)


def test_training_moves_every_parameter(single):
    """Guard: training changes every parameter (else equality would prove nothing)."""
    torch.manual_seed(0)
    start = Model().double().state_dict()
    assert [k for k in start if torch.equal(start[k], single[k])] == []


def test_ddp_two_processes_match_single_process(ranks, single):
    assert_trained_like_one_process([r["ddp"] for r in ranks], single)


def test_fsdp2_fully_shard_two_processes_match_single_process(ranks, single):
    assert_trained_like_one_process([r["fsdp"] for r in ranks], single)
