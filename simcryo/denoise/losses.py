"""Training losses of the denoisers: the content loss of the reference mode and the two
self-supervised losses (Neighbor2Neighbor and Monte-Carlo SURE; why these: see `trainers`)."""
import torch
import torch.nn.functional as F


def content_loss(out, target, kind):
    """L1 or L2 between the generator's output and the clean target."""
    return F.l1_loss(out, target) if kind == "l1" else F.mse_loss(out, target)


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


def n2n_loss(G, images, generator, gamma):
    """Neighbor2Neighbor loss of (B, 1, H, W) images: (total, reconstruction term)."""
    i1, i2 = neighbor_choice(images.shape, generator)
    g1, g2 = neighbor_subsample(images, i1), neighbor_subsample(images, i2)
    with torch.no_grad():
        full = G(images)
    out = G(g1)
    diff = out - g2
    rec = (diff ** 2).mean()
    reg = ((diff - (neighbor_subsample(full, i1) - neighbor_subsample(full, i2))) ** 2).mean()
    return rec + gamma * reg, rec


def sure_loss(G, images, probe, noise_var, eps=1e-2):
    """Monte-Carlo SURE for Gaussian noise of covariance C (Ramani et al. 2008; Soltanayev &
    Chun 2018), per pixel:  |G(y) - y|^2 / N + 2 b.(G(y + eps b) - G(y)) / (eps N) - tr(C) / N,
    with probe b ~ N(0, C). Its expectation is the MSE between G(y) and the clean image, so
    minimising it trains a denoiser without clean data; C is the background noise model."""
    out = G(images)
    shifted = G(images + eps * probe)
    n = images[0].numel()
    fit = ((out - images) ** 2).flatten(1).mean(1)
    div = (probe * (shifted - out)).flatten(1).sum(1) / (eps * n)
    return (fit + 2 * div - noise_var).mean()
