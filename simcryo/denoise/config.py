"""Every hyperparameter of `simcryo denoise` (train and apply), with its validation."""
import dataclasses
from dataclasses import dataclass, field

from simcryo.config import mask_diameter_field
from simcryo.errors import SimcryoError


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
    mask_diameter: float = mask_diameter_field(
        used_for="pixels outside the circle are background (noise statistics, "
                 "normalisation); at least 5%% of the box must stay outside it",
        auto_help="0.8 x the box, the former default")
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
        if self.mask_diameter < 0:
            raise SimcryoError("--mask-diameter must be >= 0 (Å; 0: 0.8 x the box)")
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
