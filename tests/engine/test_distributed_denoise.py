"""`simcryo denoise train` and `apply` under `torchrun --standalone --nproc_per_node 2` (gloo,
CPU, one thread per process) against one process, on 48 simulated particles of 32 px.

Train is data parallel: every rank draws the batch's random numbers, builds and runs its
block of the pairs, the gradients are summed, the discriminator's BatchNorm is over the
whole batch. Not bit-equal: each loss is the sum of the two ranks' shares (another float
order), and Adam turns the exactly-zero gradients of the biases of the convolutions before
a BatchNorm into steps of the learning rate whose sign is float noise (as in
test_distributed.PRE_BATCHNORM). Measured with these flags: reference mode (2 epochs, the
GAN on in the second): generator weights within 1.5e-8 of one process, discriminator
weights within 1.2e-6 but for those biases and the running means they feed (3.5e-4); self
mode (SURE, 3 epochs): within 8.4e-7, also when rank 1 is killed after epoch 2 and one
process resumes. Held to 1e-5. Without the gradient sum the weights came out 7e-3 apart,
without the synchronised BatchNorm the discriminator's 1.1e-2.
Apply: each rank denoises its block of rows into rank 0's stack; measured bit-equal to one
process (held to 1e-5), the STAR byte-equal; a rank that fails leaves no output.
"""
import json
import os
import shutil
import subprocess

import mrcfile
import numpy as np
import pytest
import torch

from simcryo.cli import main as cli_main
from simcryo.denoise import losses
from simcryo.denoise.pairs import ReferencePairs
from simcryo.io.star import read_star
from tests.engine.test_distributed import _kill_rank_one_at, _run_torchrun, _torchrun

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--channels", "8", "--res-blocks", "1", "--batch-size", "16", "--images-per-epoch",
        "64", "--projections-per-epoch", "32", "--val-images", "32", "--stats-images", "48",
        "--threads", "1", "--seed", "3"]
REFERENCE = TINY + ["--epochs", "2", "--gan-warmup-epochs", "1"]  # the GAN in epoch 2
SELF = TINY + ["--mode", "self", "--self-method", "sure", "--epochs", "3"]
# discriminator entries left to float noise (module docstring): the biases of the
# convolutions before a BatchNorm and the running means of those BatchNorms
PRE_BATCHNORM = ("net.2.bias", "net.5.bias", "net.8.bias", "net.3.running_mean",
                 "net.6.running_mean", "net.9.running_mean")
ATOL = 1e-5


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """2 views x 24 particles (box 32, SNR 1, CTF) and the phantom volume."""
    d = tmp_path_factory.mktemp("sim")
    assert cli_main(["simulate", "--o", str(d), "--classes", "2", "--per-class", "24",
                     "--box", "32", "--snr", "1", "--seed", "3", "--threads", "1"]) == 0
    return str(d / "particles.star"), str(d / "volume.mrc")


@pytest.fixture(scope="module")
def reference_one(sim, tmp_path_factory):
    star, volume = sim
    out = str(tmp_path_factory.mktemp("ref1") / "model")
    assert cli_main(["denoise", "train", "--i", star, "--volume", volume, "--o", out,
                     *REFERENCE]) == 0
    return out


def _trained(model_dir):
    return torch.load(os.path.join(model_dir, "checkpoint.pt"), weights_only=True)["trainer"]


def _run_json(folder):
    with open(os.path.join(folder, "run.json")) as f:
        return json.load(f)


def _assert_same_weights(one, two, skip=()):
    for name, value in one.items():
        if name not in skip:
            np.testing.assert_allclose(two[name].numpy(), value.numpy(), atol=ATOL,
                                       err_msg=name)


def test_reference_train_two_ranks_match_one_process(sim, reference_one, tmp_path):
    star, volume = sim
    out = str(tmp_path / "model")
    cmd, env = _torchrun("denoise", "train", "--i", star, "--volume", volume, "--o", out,
                         *REFERENCE)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = _trained(reference_one), _trained(out)
    assert _run_json(reference_one)["world_size"] == 1 and _run_json(out)["world_size"] == 2
    assert _run_json(out)["curves"]["adversarial"][-1] > 0  # the GAN trained in epoch 2
    _assert_same_weights(one["G"], two["G"])
    _assert_same_weights(one["D"], two["D"], skip=PRE_BATCHNORM)
    # rank 0 alone writes and logs: one process's files, each line once
    assert sorted(os.listdir(out)) == sorted(os.listdir(reference_one))
    assert proc.stdout.count("epoch 2/2 ") == 1, proc.stdout
    assert proc.stdout.count("model written to ") == 1


def test_apply_two_ranks_match_one_process(sim, reference_one, tmp_path):
    star, _ = sim
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    flags = ["--threads", "1", "--apply-batch", "16"]  # blocks of 16 rows, 24 per rank
    assert cli_main(["denoise", "apply", "--i", star, "--model", reference_one, "--o", one,
                     *flags]) == 0
    _run_torchrun("denoise", "apply", "--i", star, "--model", reference_one, "--o", two, *flags)
    assert _run_json(two)["world_size"] == 2
    with mrcfile.open(os.path.join(one, "particles.mrcs")) as a, \
            mrcfile.open(os.path.join(two, "particles.mrcs")) as b:
        assert b.data.shape == a.data.shape == (48, 32, 32)
        np.testing.assert_allclose(b.data, a.data, atol=ATOL)
        assert b.header.dmean == pytest.approx(float(a.header.dmean), abs=ATOL)
    # every input row in input order, every column kept but the stack name
    with open(os.path.join(one, "particles.star")) as a, \
            open(os.path.join(two, "particles.star")) as b:
        assert a.read() == b.read()
    src = read_star(star)["particles"]
    res = read_star(os.path.join(two, "particles.star"))["particles"]
    for label in src.labels:
        if label != "rlnImageName":
            assert res[label] == src[label], label
    assert res["rlnImageName"] == [f"{i + 1}@particles.mrcs" for i in range(48)]
    assert sorted(os.listdir(two)) == sorted(os.listdir(one))  # no temporary left


def test_failing_rank_leaves_no_apply_output(sim, reference_one, tmp_path):
    """A particle of rank 1's block is constant: rank 1 fails after rank 0 created the
    stack, rank 0 stops at the barrier, and the output folder holds no stack (not even a
    temporary), STAR or run.json."""
    star, _ = sim
    data = tmp_path / "data"
    shutil.copytree(os.path.dirname(star), data)
    names = read_star(str(data / "particles.star"))["particles"]["rlnImageName"]
    with mrcfile.open(str(data / "particles.mrcs"), "r+") as m:
        m.data[int(names[47].split("@")[0]) - 1] = 1.0  # row 47: rank 1's block of 24..47
    out = tmp_path / "out"
    cmd, env = _torchrun("denoise", "apply", "--i", str(data / "particles.star"), "--model",
                         reference_one, "--o", str(out), "--threads", "1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0
    assert "simcryo denoise: error: (rank 1) particle 48 is empty or constant" in proc.stderr, \
        proc.stderr[-3000:]
    assert os.listdir(out) == [".simcryo.lock"]


def test_killed_rank_then_resume_by_one_process(sim, tmp_path):
    """Self mode (SURE: the noise refinement of epoch 2 sharded too): rank 1 killed after
    epoch 2 of 3 fails the job without a model or run.json; one process resumes rank 0's
    checkpoint and ends where an uninterrupted one-process training ends."""
    star, _ = sim
    out = str(tmp_path / "model")
    cmd, env = _torchrun("denoise", "train", "--i", star, "--o", out, *SELF)
    code, output = _kill_rank_one_at(cmd, env, "epoch 2/3 ")
    assert code != 0, output
    assert "SIGKILL" in output
    for name in ("model.pt", "run.json"):
        assert not os.path.exists(os.path.join(out, name)), name
    assert torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)["epoch"] == 2
    assert cli_main(["denoise", "train", "--i", star, "--o", out, "--resume", *SELF]) == 0
    fresh = str(tmp_path / "fresh")
    assert cli_main(["denoise", "train", "--i", star, "--o", fresh, *SELF]) == 0
    assert _run_json(out)["world_size"] == 1
    _assert_same_weights(_trained(fresh)["G"], _trained(out)["G"])
    np.testing.assert_allclose(_run_json(out)["curves"]["val"], _run_json(fresh)["curves"]["val"],
                               rtol=1e-4)


def test_losses_and_pairs_split_by_rows():
    """The data-parallel decomposition, in one process: the rows of two blocks of a batch
    give the whole batch's pairs, and their loss shares sum to its loss (the generator's
    random draws are those of the whole batch)."""
    torch.manual_seed(0)
    G = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False).requires_grad_(False)
    images = torch.randn(10, 1, 16, 16)
    probe = torch.randn(10, 1, 16, 16)
    blocks = [np.arange(0, 5), np.arange(5, 10)]
    whole = losses.n2n_loss(G, images, torch.Generator().manual_seed(1), 2.0)[0]
    shares = [losses.n2n_loss(G, images[r], torch.Generator().manual_seed(1), 2.0, 10, r)[0]
              for r in blocks]
    assert float(sum(shares)) == pytest.approx(float(whole), rel=1e-5)
    whole = losses.sure_loss(G, images, probe, 1.0)
    shares = [losses.sure_loss(G, images[r], probe[r], 1.0, n=10) for r in blocks]
    assert float(sum(shares)) == pytest.approx(float(whole), rel=1e-5)
    from simcryo.denoise.noise import NoiseModel, background_mask
    from simcryo.simulation.phantom import make_phantom
    volume = torch.from_numpy(make_phantom(16, seed=0))
    mask = background_mask(16, 0.8)
    pairs = ReferencePairs(volume, NoiseModel(torch.ones(16, 16)), mask, 4.0, max_shift=2.0,
                           empty_fraction=0.3)
    pairs.refresh(8, torch.Generator().manual_seed(2))
    noisy, clean = pairs.sample(10, torch.Generator().manual_seed(3))
    for r in blocks:
        part = pairs.sample(10, torch.Generator().manual_seed(3), r)
        torch.testing.assert_close(part[0], noisy[r], atol=1e-6, rtol=0)
        torch.testing.assert_close(part[1], clean[r], atol=1e-6, rtol=0)
