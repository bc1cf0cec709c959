"""The two denoiser trainers.

Reference-guided (the paper's): a GAN trained on pairs from `ReferencePairs`; loss =
content_weight * L1/L2(G(noisy), clean) + adversarial_weight * BCE(D(G(noisy)), real).
The first `gan_warmup_epochs` train G on the content loss alone (as SRGAN does) so that the
discriminator starts against a sensible generator.

Self-supervised (no volume), two methods:
- 'sure' (default): Monte-Carlo SURE (Stein's unbiased risk estimate; Soltanayev & Chun,
  NeurIPS 2018) with the noise model measured on the particles' background, the same model
  the reference mode uses. For Gaussian noise of known covariance C the loss
  |G(y) - y|^2 + 2 tr(C dG/dy) - tr(C) has the MSE to the clean image as its expectation,
  so the network is trained at full resolution, at the data's own noise level, towards the
  MSE-optimal denoiser, and the validation loss reads directly as an estimated MSE.
- 'n2n': Neighbor2Neighbor (Huang et al., CVPR 2021): two half-resolution images from
  adjacent pixels of every 2x2 cell predict each other, plus the regulariser
  gamma * |G(g1) - g2 - (g1(G(y)) - g2(G(y)))|^2. Chosen over blind-spot methods
  (Noise2Self / Noise2Void) because every pixel feeds the loss and no blind-spot
  architecture is needed.
Why SURE is the default: on simulated particles (hand volume, 64 px, CTF, SNR 0.1, same
network and budget) Neighbor2Neighbor stayed below a Gaussian low-pass tuned on the truth,
because it learns at half resolution, where a particle looks twice smaller, and is applied at
full resolution; SURE beat that low-pass by about 2 dB. SURE assumes Gaussian noise with the
measured spectrum (independent of the signal); Neighbor2Neighbor assumes only noise
independent between neighbouring pixels, so it remains the choice when the background noise
model is doubtful (e.g. tiny backgrounds).

Data parallel under torchrun (simcryo.distributed): every rank draws the same batches,
pairs, probe noise and augmentations (generators seeded by (seed, stream, epoch), never by
rank) but builds and runs only its block of each batch (`distributed.shard`); each loss is
the block's share of the batch mean (losses.batch_mean), the gradients are summed over the
ranks before each step and the discriminator's BatchNorm normalises over the whole batch
(`distributed.sync_batch_norms`), so N ranks train the networks one process trains, up to
the order of float sums. Validation is sharded and summed; the logged losses are reduced.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

from simcryo import distributed
from simcryo.denoise import noise as noise_mod
from simcryo.denoise.losses import batch_mean, content_loss, n2n_loss, sure_loss
from simcryo.denoise.model_io import arch_of, build_generator
from simcryo.denoise.networks import Discriminator
from simcryo.denoise.pairs import ctf_signs, phase_flip
from simcryo.errors import SimcryoError
from simcryo.runtime import epoch_generator

# streams of `epoch_generator`: training draws per epoch, fixed validation draws
TRAIN_STREAM, VAL_STREAM = "denoise", "denoise-val"


def lr_factor(epoch, epochs, final):
    """Cosine decay from 1 to `final`; a pure function of the epoch so resume is exact."""
    t = epoch / max(epochs - 1, 1)
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * t))


def _schedule_lr(optimizer, cfg, epoch):
    """Set the generator's learning rate of `epoch` (cosine schedule from cfg.lr)."""
    for group in optimizer.param_groups:
        group["lr"] = cfg.lr * lr_factor(epoch, cfg.epochs, cfg.lr_final)


def _step(optimizer, loss):
    """One optimiser step on this rank's share of the batch loss, gradients summed over
    the ranks (every rank then takes the same step)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    distributed.all_reduce_grads([p for g in optimizer.param_groups for p in g["params"]])
    optimizer.step()


def _summed(*values):
    """Floats summed over the ranks (the ranks' shares of batch means: the means)."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    return distributed.all_reduce_sum(t).tolist()


def _bce(logits, real, n):
    """Binary cross entropy of patch logits against all-real (or all-fake) labels, as a
    share of the mean over a batch of n."""
    target = torch.full_like(logits, 1.0 if real else 0.0)
    return batch_mean(F.binary_cross_entropy_with_logits(logits, target, reduction="none"), n)


class ReferenceTrainer:
    """GAN training on `ReferencePairs`."""

    def __init__(self, cfg, pairs, device):
        self.cfg, self.pairs, self.device = cfg, pairs, device
        torch.manual_seed(cfg.seed)
        self.G = build_generator(arch_of(cfg)).to(device)
        self.D = distributed.sync_batch_norms(Discriminator(cfg.disc_width).to(device))
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.lr)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.disc_lr, betas=(0.5, 0.999))
        gen = epoch_generator(cfg.seed, VAL_STREAM, 0)
        pairs.refresh(cfg.projections_per_epoch, gen)
        noisy, clean = pairs.sample(cfg.val_images, gen, distributed.shard(cfg.val_images))
        self.val = (noisy.to(device), clean.to(device))  # this rank's block of them

    def train_epoch(self, epoch, on_step=None):
        cfg = self.cfg
        _schedule_lr(self.opt_g, cfg, epoch)
        use_gan = cfg.adversarial_weight > 0 and epoch >= cfg.gan_warmup_epochs
        gen = epoch_generator(cfg.seed, TRAIN_STREAM, epoch)
        self.pairs.refresh(cfg.projections_per_epoch, gen)
        steps = max(1, cfg.images_per_epoch // cfg.batch_size)
        n, rows = cfg.batch_size, distributed.shard(cfg.batch_size)
        self.G.train()
        self.D.train()
        sums = {"content": 0.0, "adversarial": 0.0, "disc": 0.0}
        for step in range(steps):
            noisy, clean = self.pairs.sample(n, gen, rows)
            noisy, clean = noisy.to(self.device), clean.to(self.device)
            d_loss = adv = torch.zeros(())
            if use_gan:
                with torch.no_grad():
                    fake = self.G(noisy)
                d_loss = _bce(self.D(clean), True, n) + _bce(self.D(fake), False, n)
                _step(self.opt_d, d_loss)
            out = self.G(noisy)
            content = content_loss(out, clean, cfg.content_loss, n)
            loss = cfg.content_weight * content
            if use_gan:
                adv = _bce(self.D(out), True, n)
                loss = loss + cfg.adversarial_weight * adv
            _step(self.opt_g, loss)
            c, a, d = _summed(content.detach(), adv.detach(), d_loss.detach())
            sums["content"] += c
            sums["adversarial"] += a
            sums["disc"] += d
            if on_step:
                on_step(step + 1, steps, c)
        stats = {k: v / steps for k, v in sums.items()}
        stats["val"] = self.validate()
        return stats

    @torch.no_grad()
    def validate(self):
        """Content loss on the fixed validation pairs (each rank its block, summed)."""
        self.G.eval()
        noisy, clean = self.val
        share = sum(float(content_loss(self.G(noisy[i:i + 64]), clean[i:i + 64],
                                       self.cfg.content_loss, self.cfg.val_images))
                    for i in range(0, len(noisy), 64))
        return _summed(share)[0]

    def state_dict(self):
        return {"G": self.G.state_dict(), "D": self.D.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict()}

    def load_state_dict(self, state):
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])


class SelfTrainer:
    """Self-supervised training on the particles themselves (method `cfg.self_method`).

    read_images(indices) -> float32 numpy (k, box, box) of raw particles. `noise_model`: the
    background noise model for SURE (measured here from the particles when None)."""

    def __init__(self, cfg, read_images, n, mask, device, noise_model=None, ctf=None,
                 apix=None):
        self.cfg, self.read, self.n, self.mask, self.device = cfg, read_images, n, mask, device
        self.ctf, self.apix = (ctf, apix) if cfg.phase_flip and ctf is not None else (None, None)
        if mask.shape[-1] < 8:
            raise SimcryoError("self-supervised mode needs a box of at least 8 px")
        if cfg.self_method == "sure" and noise_model is None:
            noise_model = noise_mod.measure_data(read_images, n, mask, cfg.stats_images, cfg.seed,
                                       device).noise
        self.noise = self.raw_noise = noise_model
        torch.manual_seed(cfg.seed)
        self.G = build_generator(arch_of(cfg)).to(device)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.lr)
        rng = np.random.default_rng(cfg.seed + 1)
        self.val_idx = np.sort(rng.choice(n, size=min(n, cfg.val_images), replace=False))
        self.stats_idx = np.sort(rng.choice(n, size=min(n, cfg.stats_images), replace=False))

    @torch.no_grad()
    def refine_noise(self):
        """SURE: remove from the background noise spectrum the signal that the current
        denoiser finds there (CTF-delocalised signal). The denoised images underestimate the
        signal, so the correction stays conservative; it tightens as training proceeds.
        Each rank denoises its block of the particles; the blocks are shared."""
        self.G.eval()
        outs = torch.zeros((len(self.stats_idx),) + tuple(self.mask.shape), device=self.device)
        for rows in distributed.shard_blocks(len(self.stats_idx), 256):
            idx = self.stats_idx[rows]
            imgs = torch.from_numpy(self.read(idx)).to(self.device)
            z = self._flip(noise_mod.normalize(imgs, self.mask)[0], idx)
            outs[rows] = self._flip(self.G(z[:, None])[:, 0], idx)
        distributed.share_all(outs)
        self.noise = noise_mod.remove_signal(self.raw_noise.psd, outs, self.mask)

    def _batch(self, idx, generator, augment, rows=None):
        """Normalised particles (k, 1, box, box) and, for SURE, probe noise with the same
        covariance (drawn from the noise model, then turned/flipped like the images); only
        the rows `rows` of the sorted batch when given (the random numbers of the whole
        batch are drawn)."""
        idx = np.sort(idx)
        own = idx if rows is None else idx[rows]
        imgs = self._flip(noise_mod.normalize(
            torch.from_numpy(self.read(own)).to(self.device), self.mask)[0], own)[:, None]
        probe = (self.noise.sample(len(idx), generator, rows)[:, None]
                 if self.cfg.self_method == "sure" else None)
        if augment:  # the 8 symmetries of the square: free extra data
            k = int(torch.randint(4, (1,), generator=generator))
            flip = bool(torch.randint(2, (1,), generator=generator))
            imgs = _turn(imgs, k, flip)
            probe = _turn(probe, k, flip) if probe is not None else None
        return imgs, probe

    def _flip(self, images, idx):
        """Phase-flip (n, box, box) images of particles `idx` by their CTFs (an involution)."""
        if self.ctf is None:
            return images
        signs = ctf_signs(self.ctf.take(idx), images.shape[-1], self.apix, self.device)
        return phase_flip(images, signs)

    def gamma(self, epoch):
        return self.cfg.n2n_gamma * (epoch + 1) / self.cfg.epochs

    def _loss(self, imgs, probe, generator, gamma, n=None, rows=None):
        """The loss of rows `rows` of a batch of n, as their share of the batch mean."""
        if self.cfg.self_method == "sure":
            return sure_loss(self.G, imgs, probe, float(self.noise.psd.mean()), n=n)
        return n2n_loss(self.G, imgs, generator, gamma, n, rows)[0]

    def train_epoch(self, epoch, on_step=None):
        cfg = self.cfg
        _schedule_lr(self.opt_g, cfg, epoch)
        gen = epoch_generator(cfg.seed, TRAIN_STREAM, epoch)
        count = cfg.images_per_epoch
        if count <= self.n:
            order = torch.randperm(self.n, generator=gen)[:count].numpy()
        else:  # fewer particles than an epoch: draw with replacement
            order = torch.randint(self.n, (count,), generator=gen).numpy()
        steps = max(1, len(order) // cfg.batch_size)
        gamma = self.gamma(epoch)
        if cfg.self_method == "sure" and epoch > 0:
            self.refine_noise()
        self.G.train()
        total = 0.0
        for step in range(steps):
            idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            rows = distributed.shard(len(idx))
            imgs, probe = self._batch(idx, gen, augment=True, rows=rows)
            loss = self._loss(imgs, probe, gen, gamma, len(idx), rows)
            _step(self.opt_g, loss)
            value = _summed(loss.detach())[0]
            total += value
            if on_step:
                on_step(step + 1, steps, value)
        return {cfg.self_method: total / steps, "val": self.validate(epoch)}

    @torch.no_grad()
    def validate(self, epoch):
        """Validation loss; for SURE an unbiased estimate of the MSE to the clean images (in
        units of the noise variance). Each rank takes its block of every chunk."""
        self.G.eval()
        gen = epoch_generator(self.cfg.seed, VAL_STREAM, 0)
        total = 0.0
        for s in range(0, len(self.val_idx), 64):
            chunk = self.val_idx[s:s + 64]
            rows = distributed.shard(len(chunk))
            imgs, probe = self._batch(chunk, gen, augment=False, rows=rows)
            total += float(self._loss(imgs, probe, gen, self.cfg.n2n_gamma, len(chunk),
                                      rows)) * len(chunk)
        return _summed(total)[0] / len(self.val_idx)

    def state_dict(self):
        return {"G": self.G.state_dict(), "opt_g": self.opt_g.state_dict()}

    def load_state_dict(self, state):
        self.G.load_state_dict(state["G"])
        self.opt_g.load_state_dict(state["opt_g"])


def _turn(t, k, flip):
    """k quarter turns, then a mirror if `flip`: one of the 8 symmetries of the square."""
    t = torch.rot90(t, k, dims=(-2, -1))
    return t.flip(-1) if flip else t
