"""Training losses of the denoisers: the content loss of the reference mode and the two
self-supervised losses (Neighbor2Neighbor and Monte-Carlo SURE; why these: see `trainers`).

Data parallel (simcryo.distributed): each takes the rows of a rank's block of a batch of n
and returns that block's share of the batch mean (`batch_mean`), so the shares, and their
gradients summed over the ranks, are the mean, and its gradient, one process computes."""
import math

import torch


def batch_mean(values, n=None):
    """Mean over a batch of n rows of which `values` (rows, ...) holds a block (all: n
    None): the block's sum over the batch's element count."""
    n = len(values) if n is None else n
    return values.sum() / (n * math.prod(values.shape[1:]))


def content_loss(out, target, kind, n=None):
    """L1 or L2 between the generator's output and the clean target (batch of n rows)."""
    diff = out - target
    return batch_mean(diff.abs() if kind == "l1" else diff ** 2, n)


_N2N_PAIRS = torch.tensor([[0, 1], [1, 0], [2, 3], [3, 2], [0, 2], [2, 0], [1, 3], [3, 1]])


def _cells(images):
    """(B, 1, H, W) -> (B, H/2, W/2, 4): the four pixels of every 2x2 cell (dy * 2 + dx)."""
    B, _, H, W = images.shape
    x = images[:, 0, :H // 2 * 2, :W // 2 * 2].reshape(B, H // 2, 2, W // 2, 2)
    return x.permute(0, 1, 3, 2, 4).reshape(B, H // 2, W // 2, 4)


def neighbor_choice(shape, generator):
    """Random pair of adjacent pixels per 2x2 cell: two index maps (B, H/2, W/2)."""
    B, _, H, W = shape
    pick = torch.randint(len(_N2N_PAIRS), (B, H // 2, W // 2), generator=generator)
    pairs = _N2N_PAIRS[pick]
    return pairs[..., 0], pairs[..., 1]


def neighbor_subsample(images, index):
    """Sub-image (B, 1, H/2, W/2) taking pixel index[b, i, j] of every 2x2 cell."""
    return _cells(images).gather(-1, index.to(images.device)[..., None])[..., 0][:, None]


def n2n_loss(G, images, generator, gamma, n=None, rows=None):
    """Neighbor2Neighbor loss of (B, 1, H, W) images: (total, reconstruction term). Data
    parallel: `images` are the rows `rows` of a batch of n; the pixel pairs are drawn for
    the whole batch."""
    n = len(images) if n is None else n
    i1, i2 = neighbor_choice((n,) + tuple(images.shape[1:]), generator)
    if rows is not None:
        i1, i2 = i1[rows], i2[rows]
    g1, g2 = neighbor_subsample(images, i1), neighbor_subsample(images, i2)
    with torch.no_grad():
        full = G(images)
    out = G(g1)
    diff = out - g2
    rec = batch_mean(diff ** 2, n)
    reg = batch_mean((diff - (neighbor_subsample(full, i1) - neighbor_subsample(full, i2))) ** 2,
                     n)
    return rec + gamma * reg, rec


def sure_loss(G, images, probe, noise_var, eps=1e-2, n=None):
    """Monte-Carlo SURE for Gaussian noise of covariance C (Ramani et al. 2008; Soltanayev &
    Chun 2018), per pixel:  |G(y) - y|^2 / N + 2 b.(G(y + eps b) - G(y)) / (eps N) - tr(C) / N,
    with probe b ~ N(0, C). Its expectation is the MSE between G(y) and the clean image, so
    minimising it trains a denoiser without clean data; C is the background noise model.
    `images`: rows of a batch of n (all when None)."""
    out = G(images)
    shifted = G(images + eps * probe)
    pixels = images[0].numel()
    fit = ((out - images) ** 2).flatten(1).mean(1)
    div = (probe * (shifted - out)).flatten(1).sum(1) / (eps * pixels)
    return batch_mean(fit + 2 * div - noise_var, n)
