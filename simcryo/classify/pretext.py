"""Stage 1: SimCLR contrastive pretext training (NT-Xent) on augmented particle views.

Data parallel under torchrun (simcryo.distributed): every rank draws the same batches and
augmentations (the generators are seeded by (seed, stream, epoch), not by rank), runs the
network on its block of each batch, gathers the embeddings of all ranks (the negatives of
the NT-Xent loss are the whole batch's, as in one process) and the gradients are summed
over the ranks before each step; BatchNorm normalises over the whole batch
(distributed.sync_batch_norms). So N ranks train the network one process trains, up to
the order of float sums. simcryo.classify.stages trains the invariant encoder's MLP
`distributed.replicated` instead (every rank the whole batch): its step is too small to
pay for the collectives.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

from simcryo import distributed
from simcryo.classify.invariant import feature_noise, neighbour_batches
from simcryo.errors import SimcryoError
from simcryo.image.geometry import rotate_images
from simcryo.runtime import epoch_generator


def nt_xent(z1, z2, temperature):
    """Normalised-temperature cross entropy of SimCLR for L2-normalised (n, d) pairs."""
    n = z1.shape[0]
    z = torch.cat([z1, z2])
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(sim, target)


def cosine_lr(base, step, total, warmup):
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(total - warmup, 1)
    return base * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def batches(n, batch_size, gen, drop_last=True):
    """Shuffled index batches (sorted within a batch for fast memory-mapped reads)."""
    perm = torch.randperm(n, generator=gen).numpy()
    stop = n - n % batch_size if (drop_last and n >= batch_size) else n
    for s in range(0, stop, batch_size):
        yield np.sort(perm[s:s + batch_size])


def load_batch(images, idx, device):
    """Rows of an (N, b, b) array or memmap -> float32 (n, 1, b, b) tensor on `device`."""
    return torch.from_numpy(np.ascontiguousarray(images[idx], dtype=np.float32)).unsqueeze(1).to(device)


def _filtered(x, prefilter):
    """`prefilter`: None, or a callable mapping cached (n, 1, b, b) images to network input."""
    return x if prefilter is None else prefilter(x)


def _contrastive_epoch(optimizer, pairs, cfg, step0, total_steps, hint):
    """The shared loop of the contrastive stages: `pairs` yields (z1, z2, n) batches of
    normalised embeddings of n positive pairs; a cosine learning-rate schedule over all
    epochs. Returns (mean NT-Xent loss, inputs seen)."""
    losses, seen, step = [], 0, step0
    warmup = max(1, total_steps // 20)
    for make_pair in pairs:
        lr = cosine_lr(cfg.lr, step, total_steps, warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        z1, z2 = make_pair()
        loss = nt_xent(z1, z2, cfg.temperature)
        if not torch.isfinite(loss):
            raise SimcryoError(f"pretext loss became NaN/Inf ({hint})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.all_reduce_grads([p for g in optimizer.param_groups for p in g["params"]])
        optimizer.step()
        losses.append(float(loss.detach()))
        seen += 2 * len(z1)
        step += 1
    return float(np.mean(losses)), seen


def _own_pairs(n):
    """Rows of a (2n, ...) batch of n anchors then n positives that this rank runs: its
    block of the anchors and the same block of the positives."""
    mine = distributed.shard(n)
    return np.concatenate([mine, n + mine])


def _gathered_pair(out, n):
    """(z1, z2) of the whole batch from this rank's network output on `_own_pairs(n)`."""
    m = len(out) // 2
    return distributed.gather_rows(out[:m], n), distributed.gather_rows(out[m:], n)


def train_epoch(backbone, head, optimizer, images, augment, cfg, epoch, device, step0, total_steps,
                prefilter=None):
    """One SimCLR epoch of the ResNet: two augmentations of each particle; returns (mean
    loss, images seen)."""
    backbone.train()
    head.train()
    n = len(images)
    gen_cpu = epoch_generator(cfg.seed, "pretext-order", epoch, "cpu")
    gen = epoch_generator(cfg.seed, "pretext-aug", epoch, device)

    def pairs():
        for idx in batches(n, min(cfg.batch_size, n), gen_cpu):
            def make_pair(idx=idx):
                x = _filtered(load_batch(images, idx, device), prefilter)
                views = torch.cat([augment(x, gen), augment(x, gen)])
                return _gathered_pair(head(backbone(views[_own_pairs(len(idx))])), len(idx))
            yield make_pair
    return _contrastive_epoch(optimizer, pairs(), cfg, step0, total_steps,
                              "images with extreme values? try a lower --lr")


def train_invariant_epoch(encoder, optimizer, z, neighbors, cfg, epoch, device, step0,
                          total_steps, positives=10, dropout=0.2):
    """One NT-Xent epoch of the invariant encoder: each particle against one of its
    `positives` nearest rotational neighbours (input dropout as the augmentation); returns
    (mean loss, inputs seen)."""
    encoder.train()
    gen = epoch_generator(cfg.seed, "invariant-pairs", epoch, "cpu")

    def pairs():
        for i, j in neighbour_batches(len(z), neighbors, min(cfg.batch_size, len(z)), gen,
                                      positives):
            def make_pair(i=i, j=j):
                x = feature_noise(torch.cat([z[i], z[j]]).to(device), dropout, gen)
                out = F.normalize(encoder(x[_own_pairs(len(i))]), dim=1)
                return _gathered_pair(out, len(i))
            yield make_pair
    return _contrastive_epoch(optimizer, pairs(), cfg, step0, total_steps, "try a lower --lr")


@torch.no_grad()
def extract_features(backbone, images, n_rot, device, batch_size=512, mask=None, prefilter=None):
    """Backbone features averaged over `n_rot` evenly spaced in-plane rotations, L2-normalised.

    Returns float32 (N, d) numpy; averaging over rotations makes the features (nearly)
    invariant to the in-plane angle, the nuisance that dominates particle images.
    """
    backbone.eval()
    out = np.zeros((len(images), backbone.out_dim), np.float32)
    angles = torch.arange(n_rot, dtype=torch.float32, device=device) * (360.0 / n_rot)
    for idx in distributed.shard_blocks(len(images), batch_size):
        x = _filtered(load_batch(images, idx, device), prefilter)
        if mask is not None:
            x = x * mask
        n = x.shape[0]
        xr = rotate_images(x.repeat(n_rot, 1, 1, 1)[:, 0], angles.repeat_interleave(n),
                           mode="bilinear")[:, None]
        h = backbone(xr).view(n_rot, n, -1).mean(0)
        out[idx] = F.normalize(h, dim=1).cpu().numpy()
    return distributed.share_all(out)
