"""Training of the two denoisers and everything they share (config, data statistics, model
files).

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
"""
import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from simcryo.denoise import noise as noise_mod
from simcryo.denoise.networks import Discriminator, Generator
from simcryo.denoise.pairs import ctf_signs, phase_flip
from simcryo.errors import SimcryoError

MODEL_VERSION = 1


@dataclass
class DenoiseConfig:
    """Every hyperparameter of `simcryo denoise` (train and apply)."""
    mode: str = field(default="auto", metadata={
        "help": "training mode: 'reference' (GAN on volume projections + the data's noise, "
                "needs --volume), 'self' (Neighbor2Neighbor on the particles alone), 'auto' "
                "(reference when --volume is given, else self)",
        "choices": ["auto", "reference", "self"]})
    epochs: int = field(default=20, metadata={"help": "training epochs"})
    images_per_epoch: int = field(default=4096, metadata={
        "help": "training images per epoch (reference: fresh pairs; self: particles drawn "
                "at random)"})
    projections_per_epoch: int = field(default=1024, metadata={
        "help": "reference mode: fresh random-orientation projections per epoch; each pair "
                "draws one and adds a random 90-degree turn, CTF, shift and noise"})
    batch_size: int = field(default=32, metadata={"help": "training batch size (images)"})
    lr: float = field(default=1e-3, metadata={
        "help": "Adam learning rate of the generator, cosine-decayed to lr * lr_final"})
    lr_final: float = field(default=0.05, metadata={
        "help": "final learning rate as a fraction of --lr"})
    channels: int = field(default=32, metadata={
        "help": "generator width (feature maps); 32 denoised as well as 48 on simulated "
                "particles at half the cost"})
    res_blocks: int = field(default=4, metadata={"help": "generator residual blocks"})
    scale: int = field(default=4, metadata={
        "help": "space-to-depth factor of the generator's convolution block (its residual "
                "blocks run on a grid this many times coarser; the sub-pixel block undoes it)"})
    odd: bool = field(default=True, metadata={
        "help": "odd generator (no biases, soft-threshold activations): G(-x) = -G(x), so "
                "denoised pure noise averages to zero and cannot reproduce the reference"})
    content_loss: str = field(default="l2", metadata={
        "help": "content loss of the reference mode", "choices": ["l1", "l2"]})
    content_weight: float = field(default=1.0, metadata={"help": "weight of the content loss"})
    adversarial_weight: float = field(default=1e-3, metadata={
        "help": "weight of the adversarial loss (0: plain supervised training, no "
                "discriminator)"})
    gan_warmup_epochs: int = field(default=1, metadata={
        "help": "epochs of content-only training before the adversarial loss is switched on"})
    disc_width: int = field(default=16, metadata={
        "help": "discriminator width (feature maps of its first layer)"})
    disc_lr: float = field(default=2e-4, metadata={"help": "Adam learning rate of the "
                                                           "discriminator"})
    phase_flip: bool = field(default=True, metadata={
        "help": "denoise in the phase-flipped domain when CTF parameters exist: images are "
                "flipped with their CTF before the network and its output is flipped back, so "
                "the output keeps the exact CTF (fringes included) while the network sees "
                "localised, defocus-independent signal"})
    mask_radius: float = field(default=0.8, metadata={
        "help": "particle mask radius as a fraction of half the box; pixels outside are "
                "background (noise statistics, normalisation)"})
    max_shift: float = field(default=3.0, metadata={
        "help": "reference mode: random translation of the projections, up to this many "
                "px per axis (particles are rarely perfectly centred)"})
    empty_fraction: float = field(default=0.1, metadata={
        "help": "reference mode: fraction of training pairs with no particle (target 0), so "
                "the network learns not to invent structure in pure noise"})
    polarity: str = field(default="auto", metadata={
        "help": "reference mode: contrast of the particles relative to the CTF-modulated "
                "projections: 'auto' (measured from the data), 'keep', 'flip'",
        "choices": ["auto", "keep", "flip"]})
    self_method: str = field(default="sure", metadata={
        "help": "self mode: 'sure' (Monte-Carlo Stein's unbiased risk estimate with the "
                "background noise model: full-resolution, its loss estimates the MSE to the "
                "clean image) or 'n2n' (Neighbor2Neighbor sub-sampling)",
        "choices": ["sure", "n2n"]})
    n2n_gamma: float = field(default=2.0, metadata={
        "help": "self mode: weight of the Neighbor2Neighbor regulariser (ramped up linearly "
                "over the epochs)"})
    stats_images: int = field(default=2000, metadata={
        "help": "particles used to measure the noise spectrum, SNR and contrast"})
    val_images: int = field(default=256, metadata={
        "help": "fixed validation images (loss printed every epoch)"})
    apply_batch: int = field(default=256, metadata={"help": "images per batch when applying"})
    device: str = field(default="cpu", metadata={"help": "torch device: cpu, cuda, cuda:N"})
    threads: int = field(default=2, metadata={"help": "CPU threads (0: torch default)"})
    seed: int = field(default=0, metadata={"help": "random seed (pairs, initialisation, "
                                                   "particle order)"})

    def validate(self):
        positive = ("epochs", "images_per_epoch", "projections_per_epoch", "batch_size",
                    "channels", "scale", "stats_images", "val_images", "apply_batch",
                    "disc_width")
        for name in positive:
            if getattr(self, name) < 1:
                raise SimcryoError(f"--{name.replace('_', '-')} must be >= 1")
        for name in ("lr", "disc_lr"):
            if not getattr(self, name) > 0:
                raise SimcryoError(f"--{name.replace('_', '-')} must be > 0")
        for name in ("content_weight", "adversarial_weight", "max_shift", "n2n_gamma",
                     "res_blocks", "gan_warmup_epochs", "threads"):
            if getattr(self, name) < 0:
                raise SimcryoError(f"--{name.replace('_', '-')} must be >= 0")
        if not 0 < self.mask_radius < 1.42:
            raise SimcryoError("--mask-radius must be in (0, 1.42) (fraction of half the box)")
        if not 0 <= self.empty_fraction < 1:
            raise SimcryoError("--empty-fraction must be in [0, 1)")
        if not 0 < self.lr_final <= 1:
            raise SimcryoError("--lr-final must be in (0, 1]")
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise SimcryoError(f"--{f.name.replace('_', '-')} must be one of "
                                   f"{', '.join(choices)} (got {getattr(self, f.name)!r})")
        if self.content_weight == 0 and self.adversarial_weight == 0:
            raise SimcryoError("content and adversarial weights are both 0: nothing to train")


def lr_factor(epoch, epochs, final):
    """Cosine decay from 1 to `final`; a pure function of the epoch so resume is exact."""
    t = epoch / max(epochs - 1, 1)
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * t))


def epoch_generator(seed, epoch, stream=0):
    """Independent seeded CPU generator per (epoch, stream): an interrupted and resumed run
    draws the same data as an uninterrupted one."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + epoch * 7919 + stream)
                                         % (2 ** 63))


# ----------------------------------------------------------------------------- data statistics
@dataclass
class DataStats:
    """What training needs to know about the particles, measured on a subset."""
    noise: noise_mod.NoiseModel
    signal_power: float
    signal_power_se: float
    snr: float
    mean_image: torch.Tensor


def measure_data(read_images, n, mask, n_stats, seed, device):
    """read_images(indices) -> float32 (k, box, box) numpy; uses up to n_stats particles."""
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(n, size=min(n, n_stats), replace=False))
    chunks = []
    for s in range(0, len(idx), 1024):
        imgs = torch.from_numpy(read_images(idx[s:s + 1024])).to(device)
        chunks.append(noise_mod.normalize(imgs, mask)[0])
    images = torch.cat(chunks)
    power, se = noise_mod.signal_power_with_error(images, mask)
    return DataStats(noise=noise_mod.estimate_noise_model(images, mask),
                     signal_power=power, signal_power_se=se,
                     snr=noise_mod.estimate_snr(images, mask),
                     mean_image=images.mean(0))


# ----------------------------------------------------------------------------- losses
def _content(out, target, kind):
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


# ----------------------------------------------------------------------------- trainers
def build_generator(arch):
    return Generator(channels=arch["channels"], res_blocks=arch["res_blocks"],
                     scale=arch["scale"], odd=arch.get("odd", False))


def arch_of(cfg):
    return {"channels": cfg.channels, "res_blocks": cfg.res_blocks, "scale": cfg.scale,
            "odd": cfg.odd}


class ReferenceTrainer:
    """GAN training on `ReferencePairs`."""

    def __init__(self, cfg, pairs, device):
        self.cfg, self.pairs, self.device = cfg, pairs, device
        torch.manual_seed(cfg.seed)
        self.G = build_generator(arch_of(cfg)).to(device)
        self.D = Discriminator(cfg.disc_width).to(device)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.lr)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.disc_lr, betas=(0.5, 0.999))
        gen = epoch_generator(cfg.seed, -1)
        pairs.refresh(cfg.projections_per_epoch, gen)
        noisy, clean = pairs.sample(cfg.val_images, gen)
        self.val = (noisy.to(device), clean.to(device))

    def train_epoch(self, epoch, on_step=None):
        cfg = self.cfg
        for group in self.opt_g.param_groups:
            group["lr"] = cfg.lr * lr_factor(epoch, cfg.epochs, cfg.lr_final)
        use_gan = cfg.adversarial_weight > 0 and epoch >= cfg.gan_warmup_epochs
        gen = epoch_generator(cfg.seed, epoch)
        self.pairs.refresh(cfg.projections_per_epoch, gen)
        steps = max(1, cfg.images_per_epoch // cfg.batch_size)
        self.G.train()
        self.D.train()
        sums = {"content": 0.0, "adversarial": 0.0, "disc": 0.0}
        for step in range(steps):
            noisy, clean = self.pairs.sample(cfg.batch_size, gen)
            noisy, clean = noisy.to(self.device), clean.to(self.device)
            if use_gan:
                with torch.no_grad():
                    fake = self.G(noisy)
                real_logits, fake_logits = self.D(clean), self.D(fake)
                d_loss = (F.binary_cross_entropy_with_logits(real_logits,
                                                             torch.ones_like(real_logits))
                          + F.binary_cross_entropy_with_logits(fake_logits,
                                                               torch.zeros_like(fake_logits)))
                self.opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                self.opt_d.step()
                sums["disc"] += float(d_loss.detach())
            out = self.G(noisy)
            content = _content(out, clean, cfg.content_loss)
            loss = cfg.content_weight * content
            if use_gan:
                logits = self.D(out)
                adv = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
                loss = loss + cfg.adversarial_weight * adv
                sums["adversarial"] += float(adv.detach())
            self.opt_g.zero_grad(set_to_none=True)
            loss.backward()
            self.opt_g.step()
            sums["content"] += float(content.detach())
            if on_step:
                on_step(step + 1, steps, float(content.detach()))
        stats = {k: v / steps for k, v in sums.items()}
        stats["val"] = self.validate()
        return stats

    @torch.no_grad()
    def validate(self):
        self.G.eval()
        noisy, clean = self.val
        losses = [_content(self.G(noisy[i:i + 64]), clean[i:i + 64], self.cfg.content_loss)
                  * len(noisy[i:i + 64]) for i in range(0, len(noisy), 64)]
        return float(sum(losses) / len(noisy))

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
            noise_model = measure_data(read_images, n, mask, cfg.stats_images, cfg.seed,
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
        signal, so the correction stays conservative; it tightens as training proceeds."""
        self.G.eval()
        outs = []
        for s in range(0, len(self.stats_idx), 256):
            idx = self.stats_idx[s:s + 256]
            imgs = torch.from_numpy(self.read(idx)).to(self.device)
            z = self._flip(noise_mod.normalize(imgs, self.mask)[0], idx)
            outs.append(self._flip(self.G(z[:, None])[:, 0], idx))
        self.noise = noise_mod.remove_signal(self.raw_noise.psd, torch.cat(outs), self.mask)

    def _batch(self, idx, generator, augment):
        """Normalised particles (k, 1, box, box) and, for SURE, probe noise with the same
        covariance (drawn from the noise model, then turned/flipped like the images)."""
        idx = np.sort(idx)
        imgs = self._flip(noise_mod.normalize(
            torch.from_numpy(self.read(idx)).to(self.device), self.mask)[0], idx)[:, None]
        probe = (self.noise.sample(len(imgs), generator)[:, None]
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

    def _loss(self, imgs, probe, generator, gamma):
        if self.cfg.self_method == "sure":
            return sure_loss(self.G, imgs, probe, float(self.noise.psd.mean()))
        return n2n_loss(self.G, imgs, generator, gamma)[0]

    def train_epoch(self, epoch, on_step=None):
        cfg = self.cfg
        for group in self.opt_g.param_groups:
            group["lr"] = cfg.lr * lr_factor(epoch, cfg.epochs, cfg.lr_final)
        gen = epoch_generator(cfg.seed, epoch)
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
            imgs, probe = self._batch(idx, gen, augment=True)
            loss = self._loss(imgs, probe, gen, gamma)
            self.opt_g.zero_grad(set_to_none=True)
            loss.backward()
            self.opt_g.step()
            total += float(loss.detach())
            if on_step:
                on_step(step + 1, steps, float(loss.detach()))
        return {cfg.self_method: total / steps, "val": self.validate(epoch)}

    @torch.no_grad()
    def validate(self, epoch):
        """Validation loss; for SURE an unbiased estimate of the MSE to the clean images (in
        units of the noise variance)."""
        self.G.eval()
        gen = epoch_generator(self.cfg.seed, -1)
        total = 0.0
        for s in range(0, len(self.val_idx), 64):
            imgs, probe = self._batch(self.val_idx[s:s + 64], gen, augment=False)
            total += float(self._loss(imgs, probe, gen, self.cfg.n2n_gamma)) * len(imgs)
        return total / len(self.val_idx)

    def state_dict(self):
        return {"G": self.G.state_dict(), "opt_g": self.opt_g.state_dict()}

    def load_state_dict(self, state):
        self.G.load_state_dict(state["G"])
        self.opt_g.load_state_dict(state["opt_g"])


def _turn(t, k, flip):
    t = torch.rot90(t, k, dims=(-2, -1))
    return t.flip(-1) if flip else t


# ----------------------------------------------------------------------------- model files
def model_record(G, cfg, mode, box, apix, extra=None):
    """Everything `apply` needs, as a plain dict (saved as model.pt)."""
    rec = {"version": MODEL_VERSION, "mode": mode, "arch": arch_of(cfg),
           "generator": {k: v.detach().cpu() for k, v in G.state_dict().items()},
           "mask_radius": cfg.mask_radius, "box": int(box), "apix": float(apix)}
    rec.update(extra or {})
    return rec


def load_generator(record, device):
    if not isinstance(record, dict) or record.get("version") != MODEL_VERSION \
            or "generator" not in record:
        raise SimcryoError("not a simcryo denoise model (or from an incompatible version)")
    G = build_generator(record["arch"]).to(device)
    G.load_state_dict(record["generator"])
    G.eval()
    return G
