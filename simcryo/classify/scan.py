"""Stage 3: SCAN clustering (Van Gansbeke et al. 2020) on frozen features.

Each head maps a feature to K class probabilities; the loss pulls a particle's probabilities
towards those of one of its mined neighbours (consistency) while an entropy term on the mean
prediction keeps all K classes in use. Several heads start from different random weights; the
one with the lowest final loss is kept. Training the heads on frozen (rotation-averaged)
features costs seconds, so the CPU budget goes to the pretext stage.

Data parallel under torchrun, as the pretext (simcryo.classify.pretext): every rank draws
the same batches and dropout masks, runs the heads on its block of each batch, gathers the
probabilities of all ranks (the entropy term is over the whole batch) and the gradients
are summed over the ranks; the final evaluation runs alike on every rank.
"""
import numpy as np
import torch
import torch.nn.functional as F

from simcryo import distributed
from simcryo.classify.pretext import batches
from simcryo.errors import SimcryoError
from simcryo.models import ClusterHeads
from simcryo.runtime import epoch_generator

EPS = 1e-8


def scan_loss(p_anchor, p_neighbor, entropy_weight):
    """Per-head SCAN loss for probabilities of shape (H, B, K): returns (total, cons, ent)."""
    dots = (p_anchor * p_neighbor).sum(-1).clamp_min(EPS)
    consistency = -torch.log(dots).mean(-1)
    mean = p_anchor.mean(1).clamp_min(EPS)
    entropy = -(mean * torch.log(mean)).sum(-1)
    return consistency - entropy_weight * entropy, consistency, entropy


def feature_dropout(h, gen, p=0.1):
    """Cheap feature-space augmentation: random dropout, then renormalise."""
    keep = (torch.rand(h.shape, generator=gen, device=h.device) >= p).to(h.dtype)
    return F.normalize(h * keep, dim=1)


def make_heads(dim, k, n_heads, seed, device):
    torch.manual_seed(seed)
    return ClusterHeads(dim, k, n_heads).to(device)


def head_probabilities(heads, h):
    """(H, B, K) probabilities of the batch `h` (B, d), data parallel under torchrun."""
    return distributed.on_own_rows(lambda x: F.softmax(heads(x), -1).transpose(0, 1),
                                   h).transpose(0, 1)


def scan_epoch(heads, optimizer, feats, neighbors, cfg, epoch, device):
    """One epoch over all anchors; returns the mean per-head total loss (numpy (H,))."""
    heads.train()
    n = feats.shape[0]
    gen_cpu = epoch_generator(cfg.seed, "scan-order", epoch, "cpu")
    gen = epoch_generator(cfg.seed, "scan-aug", epoch, device)
    nb = torch.as_tensor(neighbors, device=device)
    totals = []
    bs = min(512, n)
    for idx in batches(n, bs, gen_cpu, drop_last=False):
        idx_t = torch.as_tensor(idx, device=device)
        pick = torch.randint(0, nb.shape[1], (len(idx),), generator=gen, device=device)
        j = nb[idx_t, pick]
        pa = head_probabilities(heads, feature_dropout(feats[idx_t], gen))
        pn = head_probabilities(heads, feature_dropout(feats[j], gen))
        total, _, _ = scan_loss(pa, pn, cfg.entropy_weight)
        loss = total.sum()
        if not torch.isfinite(loss):
            raise SimcryoError("SCAN loss became NaN/Inf")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.all_reduce_grads(heads.parameters())
        optimizer.step()
        totals.append(total.detach().cpu().numpy() * len(idx))
    return np.sum(totals, 0) / n


@torch.no_grad()
def evaluate_heads(heads, feats, neighbors, entropy_weight, batch=1024):
    """Deterministic per-head SCAN loss on all anchors and all neighbours (numpy (H,)).
    Anchors in batches: the neighbours' probabilities (H, N, knn, K) of all at once took
    8 GB at 10^5 particles, K = 100."""
    heads.eval()
    p = F.softmax(heads(feats), -1)
    nb = torch.as_tensor(neighbors, device=feats.device)
    log_dots = torch.zeros(p.shape[0], dtype=torch.float64, device=feats.device)
    for s in range(0, p.shape[1], batch):
        dots = torch.einsum("hnk,hnjk->hnj", p[:, s:s + batch], p[:, nb[s:s + batch]])
        log_dots += torch.log(dots.clamp_min(EPS)).sum((1, 2)).double()
    consistency = (-log_dots / nb.numel()).float()
    mean = p.mean(1).clamp_min(EPS)
    entropy = -(mean * torch.log(mean)).sum(-1)
    return (consistency - entropy_weight * entropy).cpu().numpy()


@torch.no_grad()
def predict(head_logits_fn, feats, batch=4096):
    out = []
    for s in range(0, feats.shape[0], batch):
        out.append(F.softmax(head_logits_fn(feats[s:s + batch]), -1))
    return torch.cat(out)
