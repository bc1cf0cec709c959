"""Stage 4: self-labelling on confident predictions, with class balancing.

Particles whose class probability exceeds `confidence` become pseudo-labelled; the head is
trained with cross-entropy on (augmented) features of those particles, each class weighted by
the inverse of its pseudo-label count so that large classes do not swallow small ones.
Data parallel under torchrun as SCAN (simcryo.classify.scan): each rank runs the head on
its block of every batch, the loss is over the gathered batch, the gradients summed.
"""
import numpy as np
import torch
import torch.nn.functional as F

from simcryo import distributed
from simcryo.classify.pretext import batches
from simcryo.classify.scan import feature_dropout
from simcryo.runtime import epoch_generator


def class_weights(labels, k):
    counts = torch.bincount(labels, minlength=k).float()
    w = torch.where(counts > 0, counts.sum() / (k * counts.clamp_min(1)), torch.zeros_like(counts))
    return w


def selflabel_epoch(head, optimizer, feats, cfg, epoch, device):
    """One epoch; returns (mean loss, number of confident particles)."""
    with torch.no_grad():
        head.eval()
        p = F.softmax(head(feats), -1)
        conf, target = p.max(1)
        mask = conf > cfg.confidence
    idx_conf = torch.nonzero(mask).flatten()
    if len(idx_conf) == 0:
        return float("nan"), 0
    weights = class_weights(target[idx_conf], p.shape[1])
    head.train()
    gen_cpu = epoch_generator(cfg.seed, "selflabel-order", epoch, "cpu")
    gen = epoch_generator(cfg.seed, "selflabel-aug", epoch, device)
    losses = []
    sel = idx_conf.cpu().numpy()
    for b in batches(len(sel), min(512, len(sel)), gen_cpu, drop_last=False):
        i = torch.as_tensor(sel[b], device=device)
        logits = distributed.on_own_rows(head, feature_dropout(feats[i], gen, p=0.2))
        loss = F.cross_entropy(logits, target[i], weight=weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.all_reduce_grads(head.parameters())
        optimizer.step()
        losses.append(float(loss.detach()))
    return float(np.mean(losses)), int(len(sel))
