"""``torchrun --nproc_per_node=2`` on the CPU (gloo, loopback only): the ranks stay identical, and equal one
process training on the whole batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import tiny_sr  # noqa: F401  (registers the tiny-sr-test model in this process)
import torch
from safetensors.torch import load_file

from conftest import timeless
from refsr.train import load_config, run_training

HERE = Path(__file__).parent
ASSETS = HERE.parent / "assets"

# Each rank trains, then saves what it ended with, so the test can compare the ranks.
WORKER = """
import json, os, sys
import torch
torch.set_num_threads(1)
from safetensors.torch import save_file
from refsr.train import load_config, run_training

config, out, sets = sys.argv[1], sys.argv[2], sys.argv[3:]
summary = run_training(load_config(config, sets), out, progress=False)
rank = int(os.environ["RANK"])
def dump(module):
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
save_file(dump(summary.model), os.path.join(out, f"rank{rank}_model.safetensors"))
save_file(dump(summary.discriminator), os.path.join(out, f"rank{rank}_discriminator.safetensors"))
with open(os.path.join(out, f"rank{rank}_records.json"), "w") as fh:
    json.dump([r.as_dict() for r in summary.records], fh)
"""

# Adam with a large eps follows the gradient's scale, so a wrong average over ranks would show. The
# adversarial loss has weight 0: the discriminator trains (and must stay in sync across ranks) without
# changing the generator, which can then be compared with a one-process run.
SETS = [
    f"data.train.sources.0.root={ASSETS}", "data.val=null", "train.tensorboard=false", "train.iterations=3",
    "train.grad_accumulation=1", "train.ema_decay=null", "optimizer.eps=1.0", "optimizer.lr=0.5",
    "train.checkpoint_interval=2",
]
GAN = ["losses=[{name: l1, weight: 1.0}, {name: adversarial, weight: 0.0, discriminator: {nf: 4, input_size: 32}}]"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_two_cpu_processes_stay_identical_and_match_one_process(tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo",
               PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(worker), str(HERE / "tiny.yaml"),
           str(out), *SETS, *GAN, "train.batch=2"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    models = [load_file(str(out / f"rank{r}_model.safetensors")) for r in (0, 1)]
    discs = [load_file(str(out / f"rank{r}_discriminator.safetensors")) for r in (0, 1)]
    for a, b in ((models[0], models[1]), (discs[0], discs[1])):
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
    # Only rank 0 writes the checkpoint, and it holds the final weights.
    saved = load_file(str(out / "checkpoints/last/model.safetensors"))
    assert all(torch.equal(saved[k], models[0][k]) for k in saved)
    records = [timeless(json.loads((out / f"rank{r}_records.json").read_text())) for r in (0, 1)]
    assert records[0] == records[1] and [r["iteration"] for r in records[0]] == [1, 2, 3]
    assert "discriminator" in records[0][-1]["losses"]

    # One process with batch 4 reads the same samples per step (ranks interleave the global order).
    single = run_training(load_config(HERE / "tiny.yaml", [*SETS, "train.batch=4"]), tmp_path / "one",
                          progress=False)
    for k, v in single.model.state_dict().items():
        torch.testing.assert_close(models[0][k], v, rtol=1e-5, atol=1e-6)
    assert [r["losses"]["l1"] for r in records[0]] == pytest.approx([r.losses["l1"] for r in single.records],
                                                                     rel=1e-5)
    init = load_config(HERE / "tiny.yaml", SETS)
    from refsr.train.builders import build_model

    assert any(not torch.allclose(v, models[0][k]) for k, v in build_model(init).state_dict().items())
