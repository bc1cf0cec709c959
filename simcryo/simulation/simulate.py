"""Labelled particle images simulated from a volume: view classes, poses, CTF, noise.

Forward model of one particle i of view class k:
1. R_i = R_small @ R_k: the class's central view R_k = euler_to_matrix(rot_k, tilt_k, 0),
   tilted by a random angle <= `spread` degrees (uniform over the spherical cap) about an axis
   in the image plane, so the viewing direction stays within `spread` of the class centre
   without adding in-plane rotation.
2. proj = project(volume, R_i)  (Fourier slice, see simcryo.simulation.projection).
3. posed = transform_images(proj, psi_i, shift_i): psi uniform in [0, 360), shift ~ N(0, sigma)
   px per axis. Hence particle ~ transform_images(reference_k, psi_i, shift_i): the truth
   columns follow the project's pose convention.
4. signal = CTF_i * posed, applied on a 2x zero-padded box then cropped, so signal delocalised
   by the CTF leaves the box instead of wrapping around (as in a real extraction).
5. particle = (signal + sigma_i * noise_i) / sigma_i, noise_i standardised to mean 0, variance 1
   over the box and sigma_i^2 = var(signal_i) / SNR: every image has exactly the target
   SNR = var(signal) / var(noise) over the box, and unit noise variance.
   `clean.mrcs` holds posed / sigma_i (CTF-free, same scale), so particle = CTF(clean) + noise.

Realistic picks (simcryo.simulation.realistic: --views uniform/preferred, --junk-fraction,
--contrast-sigma, --noise coloured): step 1 draws continuous directions instead of class
centres, junk replaces step 2-3 by its own signal (none, blobs, a shift without wrap-around,
another map's projection) and step 5 multiplies signal / sigma_i by the image's contrast
scale (empty picks: noise only). Without these options the output is that of the discrete
model above, unchanged.

Realistic noise (`RealNoise`): noise cut from the background of real particle images.
- The real images are Fourier-resampled to the output pixel size; each is scaled by the std of
  its background (pixels outside a circle of `mask_radius` px), so every source image
  contributes noise of the same level.
- Patches are P x P squares lying entirely outside the mask (any position, so patches from one
  image overlap); P = min(output box, largest square that fits in a corner outside the mask).
  Each patch has its own mean subtracted.
- When P < box, a noise image is tiled from random patches with an overlap O = P // 4 using
  sine/cosine ramps whose squares sum to one, so the local variance (and, for noise, the
  spectrum) is preserved across seams; the tiling starts O px before the box so the box edges
  have full weight. The tiled image is then standardised like white noise.
"""
import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from simcryo.errors import SimcryoError
from simcryo.image.ctf import apply_ctf_padded
from simcryo.image.mask import circular_mask
from simcryo.image.volume import fourier_resize_volume, resample_volume
from simcryo.simulation.projection import (Projector, axis_angle_matrix, euler_to_matrix, matrix_to_euler,
                                min_angular_separation, angles_to_direction, view_directions,
                                direction_to_angles)
from simcryo.simulation import realistic
from simcryo.simulation.realistic import JUNK_KINDS, KINDS, VIEW_MODES

TRUTH_LABELS = ("simcryoTrueClass", "simcryoTruePsi", "simcryoTrueOriginXAngst",
                "simcryoTrueOriginYAngst", "simcryoTrueAngleRot", "simcryoTrueAngleTilt",
                "simcryoTrueKind", "simcryoTrueContrast")
PHANTOM_APIX = 3.0


@dataclass
class SimulateConfig:
    o: str = field(default="", metadata={"help": "output folder (created)", "metavar": "DIR"})
    volume: str = field(default="", metadata={
        "help": "input map (MRC); empty: the built-in asymmetric phantom", "metavar": "MAP.mrc"})
    apix: float = field(default=0.0, metadata={
        "help": "pixel size of the input map in Å/px (0: from the map header; the phantom uses "
                f"{PHANTOM_APIX} Å/px at --box)"})
    box: int = field(default=0, metadata={
        "help": "output box in px, even; the map is Fourier-resampled to it (0: the map's own "
                "size, 64 for the phantom)"})
    classes: int = field(default=10, metadata={
        "help": "number of view classes K (continuous --views: the K directions whose nearest "
                "one is a particle's _simcryoTrueClass)"})
    per_class: int = field(default=100, metadata={"help": "particles per view class M"})
    views: str = field(default="discrete", metadata={
        "help": "orientations: discrete (K view classes within --spread of their centres), "
                "uniform (directions uniform over the sphere) or preferred (a share "
                "--preferred-fraction near --preferred-views directions, the rest uniform)",
        "choices": list(VIEW_MODES)})
    particles: int = field(default=0, metadata={
        "help": "good particles for continuous --views (0: classes x per-class); junk comes "
                "on top"})
    preferred_views: int = field(default=2, metadata={
        "help": "number of preferred directions for --views preferred"})
    preferred_fraction: float = field(default=0.5, metadata={
        "help": "share of good particles near the preferred directions (--views preferred)"})
    preferred_spread: float = field(default=15.0, metadata={
        "help": "angular width of each preferred direction (degrees, Fisher distribution)"})
    junk_fraction: float = field(default=0.0, metadata={
        "help": "share of all output particles that are junk (0 to < 1); junk has "
                "_simcryoTrueClass 0 and its kind in _simcryoTrueKind"})
    junk_kinds: str = field(default="empty,blob,offcentre", metadata={
        "help": "comma-separated junk kinds, in equal proportions: empty (noise only), blob "
                "(ice / aggregate blobs), offcentre (particle moved by 25-45 %% of the box, cut "
                "by its edge), other (particles of --junk-volume)"})
    junk_volume: str = field(default="", metadata={
        "help": "map (MRC) whose particles are the 'other' junk kind", "metavar": "MAP.mrc"})
    junk_volume_apix: float = field(default=0.0, metadata={
        "help": "pixel size of --junk-volume in Å/px (0: from its header)"})
    contrast_sigma: float = field(default=0.0, metadata={
        "help": "per-image signal scale exp(N(0, sigma^2)) after the SNR scaling (ice "
                "thickness; 0: off), written as _simcryoTrueContrast"})
    min_separation: float = field(default=15.0, metadata={
        "help": "minimum angle between class view directions (degrees)"})
    spread: float = field(default=5.0, metadata={
        "help": "angular spread: each particle's direction lies within this angle of its class "
                "centre (degrees, uniform over the spherical cap)"})
    mirrors_distinct: bool = field(default=False, metadata={
        "help": "treat opposite directions (mirror-image views) as far apart when separating "
                "classes"})
    rotate: bool = field(default=True, metadata={
        "help": "uniform in-plane rotation psi in [0, 360) degrees (--no-rotate: psi = 0)"})
    shift_sigma: float = field(default=2.0, metadata={
        "help": "standard deviation of the in-plane shifts per axis (px)"})
    ctf: bool = field(default=True, metadata={"help": "apply a per-particle CTF"})
    defocus_min: float = field(default=1.0, metadata={"help": "minimum mean defocus (µm)"})
    defocus_max: float = field(default=2.5, metadata={"help": "maximum mean defocus (µm)"})
    astigmatism: float = field(default=0.05, metadata={
        "help": "maximum defocus difference DefocusU - DefocusV (µm, uniform in [0, max])"})
    voltage: float = field(default=300.0, metadata={"help": "acceleration voltage (kV)"})
    cs: float = field(default=2.7, metadata={"help": "spherical aberration (mm)"})
    amp_contrast: float = field(default=0.1, metadata={"help": "amplitude contrast (fraction)"})
    bfactor: float = field(default=0.0, metadata={"help": "CTF envelope B-factor (Å^2)"})
    snr: float = field(default=0.1, metadata={
        "help": "signal-to-noise ratio var(signal)/var(noise) over the box, per particle"})
    noise: str = field(default="white", metadata={
        "help": "noise model: white (Gaussian), coloured (power 1 + (s_c / s)^alpha: 1/f-like "
                "below 1 / --noise-corner, flat above) or real (cut from --noise-stack "
                "backgrounds)", "choices": ["white", "coloured", "real"]})
    noise_corner: float = field(default=40.0, metadata={
        "help": "coloured noise: resolution (Å) where the 1/f part equals the flat part"})
    noise_exponent: float = field(default=1.0, metadata={
        "help": "coloured noise: exponent alpha of the low-frequency part (1: 1/f)"})
    noise_stack: str = field(default="", metadata={
        "help": "real images (STAR or .mrcs) whose backgrounds give the noise for --noise real",
        "metavar": "FILE"})
    noise_apix: float = field(default=0.0, metadata={
        "help": "pixel size of --noise-stack in Å/px (0: from its STAR/header)"})
    noise_mask_radius: float = field(default=0.0, metadata={
        "help": "particle mask radius in px of the noise images; background lies outside it "
                "(0: 0.4 x their box)"})
    noise_images: int = field(default=1000, metadata={
        "help": "at most this many real images are read for noise (random subset)"})
    save_clean: bool = field(default=False, metadata={
        "help": "also write clean.mrcs: CTF-free, noise-free posed particles on the particles' "
                "scale"})
    batch: int = field(default=512, metadata={"help": "particles simulated per batch"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    threads: int = field(default=0, metadata={"help": "CPU threads for torch (0: default)"})
    device: str = field(default="cpu", metadata={"help": "torch device: cpu or cuda:N"})

    def validate(self):
        if not self.o:
            raise SimcryoError("no output folder: give --o DIR")
        if self.classes < 1 or self.per_class < 1:
            raise SimcryoError("--classes and --per-class must be >= 1")
        if self.box and (self.box < 16 or self.box % 2):
            raise SimcryoError(f"--box must be an even number >= 16 (got {self.box})")
        if self.apix < 0:
            raise SimcryoError(f"--apix must be > 0 (got {self.apix})")
        if not self.snr > 0 or not math.isfinite(self.snr):
            raise SimcryoError(f"--snr must be > 0 (got {self.snr})")
        if self.spread < 0 or self.shift_sigma < 0:
            raise SimcryoError("--spread and --shift-sigma must be >= 0")
        self._validate_realistic()
        if self.views == "discrete" and self.classes > 1 and 2 * self.spread >= self.min_separation:
            raise SimcryoError(f"--spread {self.spread:g} must be less than half of "
                               f"--min-separation {self.min_separation:g} so classes do not "
                               "overlap")
        if self.ctf:
            if not 0 < self.defocus_min <= self.defocus_max:
                raise SimcryoError("need 0 < --defocus-min <= --defocus-max (µm)")
            if self.astigmatism < 0 or self.voltage <= 0 or self.cs < 0:
                raise SimcryoError("--astigmatism and --cs must be >= 0, --voltage > 0")
            if not 0 <= self.amp_contrast < 1:
                raise SimcryoError("--amp-contrast must be in [0, 1)")
        if self.noise == "real" and not self.noise_stack:
            raise SimcryoError("--noise real needs --noise-stack (a STAR or .mrcs of real "
                               "particles)")
        if self.noise not in ("white", "coloured", "real"):
            raise SimcryoError(f"unknown --noise {self.noise} (white, coloured or real)")
        if self.noise == "coloured" and not (self.noise_corner > 0 and self.noise_exponent >= 0):
            raise SimcryoError("--noise-corner must be > 0 Å and --noise-exponent >= 0")
        if self.batch < 1 or self.noise_images < 1:
            raise SimcryoError("--batch and --noise-images must be >= 1")


    def _validate_realistic(self):
        if self.views not in VIEW_MODES:
            raise SimcryoError(f"unknown --views {self.views} ({', '.join(VIEW_MODES)})")
        if self.particles < 0:
            raise SimcryoError("--particles must be >= 0")
        if self.views == "preferred" and not (self.preferred_views >= 1 and
                                              0 <= self.preferred_fraction <= 1 and
                                              self.preferred_spread > 0):
            raise SimcryoError("--views preferred needs --preferred-views >= 1, "
                               "--preferred-fraction in [0, 1] and --preferred-spread > 0")
        if not 0 <= self.junk_fraction < 1:
            raise SimcryoError(f"--junk-fraction must be in [0, 1) (got {self.junk_fraction})")
        bad = [k for k in self.junk_kind_list() if k not in JUNK_KINDS]
        if bad:
            raise SimcryoError(f"unknown --junk-kinds {','.join(bad)} "
                               f"(choose from {','.join(JUNK_KINDS)})")
        if self.junk_fraction and not self.junk_kind_list():
            raise SimcryoError("--junk-fraction > 0 needs at least one --junk-kinds")
        if "other" in self.junk_kind_list() and self.junk_fraction and not self.junk_volume:
            raise SimcryoError("junk kind 'other' needs --junk-volume MAP.mrc")
        if self.contrast_sigma < 0 or self.junk_volume_apix < 0:
            raise SimcryoError("--contrast-sigma and --junk-volume-apix must be >= 0")

    def junk_kind_list(self):
        return [k.strip() for k in self.junk_kinds.split(",") if k.strip()]

    def n_good(self):
        if self.views == "discrete":
            return self.classes * self.per_class
        return self.particles or self.classes * self.per_class

    def realistic(self):
        """True when anything beyond the discrete view classes is asked for."""
        return (self.views != "discrete" or self.junk_fraction > 0 or self.contrast_sigma > 0)


# ---------------------------------------------------------------- volume

def load_volume(cfg):
    """(volume tensor (box,)*3, apix of the output in Å/px, description)."""
    if not cfg.volume:
        from simcryo.simulation.phantom import make_phantom
        box = cfg.box or 64
        apix = cfg.apix or PHANTOM_APIX
        return torch.from_numpy(make_phantom(box, seed=0)), apix, "built-in phantom"
    from simcryo.io.mrc import read_volume
    if not os.path.exists(cfg.volume):
        raise SimcryoError(f"volume not found: {cfg.volume}")
    vol, header_apix = read_volume(cfg.volume)
    apix = cfg.apix or header_apix
    if not apix:
        raise SimcryoError(f"{cfg.volume}: pixel size not in the header; give --apix")
    D = vol.shape[0]
    box = cfg.box or D
    if box % 2:
        raise SimcryoError(f"{cfg.volume}: box {box} is odd; give an even --box")
    if np.ptp(vol) == 0:
        raise SimcryoError(f"{cfg.volume}: the map is constant")
    return fourier_resize_volume(vol, box), apix * D / box, cfg.volume


def load_junk_volume(cfg, box, apix):
    """--junk-volume resampled to the output pixel size `apix` and cropped / zero-padded to
    `box` (centred)."""
    from simcryo.io.mrc import read_volume
    if not os.path.exists(cfg.junk_volume):
        raise SimcryoError(f"junk volume not found: {cfg.junk_volume}")
    vol, header_apix = read_volume(cfg.junk_volume)
    src_apix = cfg.junk_volume_apix or header_apix
    if not src_apix:
        raise SimcryoError(f"{cfg.junk_volume}: pixel size not in the header; give "
                           "--junk-volume-apix")
    out = resample_volume(torch.as_tensor(vol), src_apix, apix, box)
    if float(out.abs().max()) == 0:
        raise SimcryoError(f"{cfg.junk_volume}: the map is empty in a {box} px box")
    return out


# ---------------------------------------------------------------- poses and CTF

@dataclass
class Poses:
    """Per-particle truth, in output (shuffled) order."""
    label: np.ndarray        # (n,) class 1..K
    rotmats: torch.Tensor    # (n, 3, 3) view before the in-plane pose
    rot: np.ndarray          # (n,) degrees (RELION rot/tilt of rotmats)
    tilt: np.ndarray
    psi: np.ndarray          # (n,) in-plane rotation applied by transform_images, degrees
    shift: np.ndarray        # (n, 2) (x, y) px
    kind: np.ndarray = None      # (n,) index into realistic.KINDS (None: all good)
    contrast: np.ndarray = None  # (n,) signal scale (None: 1)

    def kinds(self):
        return np.zeros(len(self.label), np.int64) if self.kind is None else self.kind


def class_views(cfg):
    """Central (rot, tilt) of each class and the separation actually achieved (degrees)."""
    rot, tilt = view_directions(cfg.classes, cfg.min_separation, seed=cfg.seed,
                                mirrors_distinct=cfg.mirrors_distinct)
    sep = min_angular_separation(angles_to_direction(rot, tilt), cfg.mirrors_distinct)
    return rot, tilt, sep


def sample_poses(class_rot, class_tilt, per_class, spread, shift_sigma, rotate, rng):
    K = len(class_rot)
    n = K * per_class
    label = np.repeat(np.arange(1, K + 1), per_class)
    label = label[rng.permutation(n)]  # the file order carries no class information
    centres = euler_to_matrix(class_rot, class_tilt, np.zeros(K))  # (K, 3, 3)
    # tilt by theta (cos theta uniform: uniform over the cap) about an in-plane axis
    cos_t = rng.uniform(math.cos(math.radians(spread)), 1.0, n)
    theta = np.degrees(np.arccos(np.clip(cos_t, -1.0, 1.0)))
    phi = rng.uniform(0.0, 2 * math.pi, n)
    axes = np.stack([np.cos(phi), np.sin(phi), np.zeros(n)], axis=1)
    small = axis_angle_matrix(torch.from_numpy(axes), torch.from_numpy(theta))
    rotmats = small @ centres[torch.from_numpy(label - 1)]
    r, t, _ = matrix_to_euler(rotmats)
    psi = rng.uniform(0.0, 360.0, n) if rotate else np.zeros(n)
    shift = rng.normal(0.0, shift_sigma, (n, 2)) if shift_sigma > 0 else np.zeros((n, 2))
    return Poses(label, rotmats, r.numpy().astype(np.float64), t.numpy().astype(np.float64),
                 psi, shift)


def sample_realistic_poses(cfg, class_rot, class_tilt, box, rng):
    """Poses of good particles (discrete or continuous views, see realistic) and junk,
    shuffled together; views of empty and blob junk are 0 (they have none)."""
    kinds = realistic.sample_kinds(cfg.n_good(), cfg.junk_fraction, cfg.junk_kind_list(), rng)
    n = len(kinds)
    good = kinds == 0
    label = np.zeros(n, dtype=np.int64)
    dirs = np.tile([0.0, 0.0, 1.0], (n, 1))
    if cfg.views == "discrete":
        p = sample_poses(class_rot, class_tilt, cfg.per_class, cfg.spread, 0.0, False, rng)
        label[good] = p.label
        dirs[good] = angles_to_direction(p.rot, p.tilt)
    else:
        dirs[good] = realistic.continuous_directions(
            int(good.sum()), cfg.views, cfg.preferred_views, cfg.preferred_fraction,
            cfg.preferred_spread, rng)
        centres = angles_to_direction(class_rot, class_tilt)
        label[good] = realistic.nearest_centre(dirs[good], centres, cfg.mirrors_distinct) + 1
    viewed = good | np.isin(kinds, [KINDS.index("offcentre"), KINDS.index("other")])
    dirs[viewed & ~good] = realistic.uniform_directions(int((viewed & ~good).sum()), rng)
    rot, tilt = direction_to_angles(dirs)
    rot, tilt = np.where(viewed, rot, 0.0), np.where(viewed, tilt, 0.0)
    rotmats = euler_to_matrix(rot, tilt, np.zeros(n))
    psi = rng.uniform(0.0, 360.0, n) if cfg.rotate else np.zeros(n)
    shift = (rng.normal(0.0, cfg.shift_sigma, (n, 2)) if cfg.shift_sigma > 0
             else np.zeros((n, 2)))
    off = kinds == KINDS.index("offcentre")
    shift[off] = realistic.offcentre_shifts(int(off.sum()), box, rng)
    psi[~viewed] = 0.0
    shift[~viewed] = 0.0
    contrast = realistic.contrast_scales(n, cfg.contrast_sigma, rng)
    return Poses(label, rotmats, rot, tilt, psi, shift, kind=kinds, contrast=contrast)


def sample_ctf(n, cfg, rng):
    """CTFParams for n particles: mean defocus uniform in [min, max] µm, astigmatism
    |dU - dV| uniform in [0, astigmatism] µm with dU >= dV, angle uniform in [0, 180)."""
    from simcryo.io.particles import CTFParams
    mean = rng.uniform(cfg.defocus_min, cfg.defocus_max, n) * 1e4  # µm -> Å
    astig = rng.uniform(0.0, cfg.astigmatism, n) * 1e4
    full = lambda v: np.full(n, float(v))  # noqa: E731
    return CTFParams(defocus_u=mean + astig / 2, defocus_v=mean - astig / 2,
                     defocus_angle=rng.uniform(0.0, 180.0, n), voltage=full(cfg.voltage),
                     cs=full(cfg.cs), amp_contrast=full(cfg.amp_contrast),
                     phase_shift=full(0.0), bfactor=full(cfg.bfactor))


def ctf_alias_resolution(defocus_max_um, voltage, box, apix):
    """Resolution (Å) beyond which the CTF of the largest defocus oscillates faster than the
    padded (2 x box) grid samples it, or None when it is sampled up to Nyquist.

    The CTF phase pi lambda dF s^2 has local frequency lambda dF s in s-space, sampled every
    1 / (2 box apix): aliasing starts at s = box apix / (lambda dF)."""
    from simcryo.image.ctf import electron_wavelength
    lam = float(electron_wavelength(voltage))
    s_alias = box * apix / (lam * defocus_max_um * 1e4)
    return None if s_alias >= 0.5 / apix else 1.0 / s_alias


# ---------------------------------------------------------------- noise

def standardize(images):
    """Per image: mean 0, variance 1 over the box."""
    flat = images.reshape(len(images), -1)
    mean = flat.mean(dim=1)
    std = flat.std(dim=1, unbiased=False).clamp_min(1e-12)
    return (images - mean[:, None, None]) / std[:, None, None]


class WhiteNoise:
    def __init__(self, box, generator):
        self.box, self.generator = box, generator

    def sample(self, n):
        return standardize(torch.randn((n, self.box, self.box), generator=self.generator))


class ColouredNoise:
    """Gaussian noise of the background spectrum realistic.coloured_power (1/f-like below the
    corner frequency, flat above), standardised per image."""

    def __init__(self, box, apix, corner_A, exponent, generator):
        self.box, self.generator = box, generator
        self.amplitude = realistic.coloured_power(box, apix, corner_A, exponent).sqrt()

    def sample(self, n):
        white = torch.randn((n, self.box, self.box), generator=self.generator)
        spec = torch.fft.rfft2(white) * self.amplitude
        return standardize(torch.fft.irfft2(spec, s=(self.box, self.box)))


def _sine_window(P, O):
    """1D window: sine ramp up over O px, 1, cosine ramp down over O px (squares of two
    overlapping ramps sum to 1)."""
    w = np.ones(P)
    ramp = np.sin(0.5 * np.pi * (np.arange(O) + 0.5) / O)
    w[:O] = ramp
    w[P - O:] = ramp[::-1]
    return w


class RealNoise:
    """Noise tiles cut from the backgrounds of real images (see the module docstring)."""

    def __init__(self, images, mask_radius, box, rng):
        """images: (m, B, B) float32 already at the output pixel size; mask_radius in px;
        rng: numpy Generator choosing patches."""
        imgs = torch.as_tensor(images, dtype=torch.float32)
        m, B, _ = imgs.shape
        self.box, self.rng = box, rng
        outside = ~circular_mask(B, mask_radius)
        if outside.sum() < 16:
            raise SimcryoError(f"noise images: no background outside a mask of radius "
                               f"{mask_radius:.1f} px in a {B} px box; lower "
                               "--noise-mask-radius")
        bg = imgs[:, outside]
        std = bg.std(dim=1)
        if (std <= 0).any():
            raise SimcryoError("noise images: a background is constant; not real images?")
        self.images = ((imgs - bg.mean(dim=1)[:, None, None]) / std[:, None, None]).numpy()
        # largest square patch that fits in a corner outside the mask
        p_max = 0
        for P in range(1, B // 2 + 1):
            inner = B // 2 - (P - 1)  # coordinate of the corner patch's innermost pixel
            if 2 * inner ** 2 > mask_radius ** 2:
                p_max = P
        if p_max < 8:
            raise SimcryoError(f"noise images: background corners hold only {p_max} px squares "
                               f"(box {B}, mask radius {mask_radius:.1f} px); lower "
                               "--noise-mask-radius")
        self.P = P = min(p_max, box)
        # all top-left positions whose P x P patch lies entirely outside the mask
        coords = np.arange(B - P + 1) - B // 2  # patch spans [s, s + P - 1] relative to centre
        near = np.where(coords > 0, coords, np.where(coords + P - 1 < 0, coords + P - 1, 0))
        ok = near[:, None] ** 2 + near[None, :] ** 2 > mask_radius ** 2
        self.positions = np.argwhere(ok)  # (q, 2) (y, x)
        self.n_images = m
        if P >= box:
            self.O, self.T = 0, 1
            self.window = np.ones((P, P), dtype=np.float32)
        else:
            self.O = O = max(2, P // 4)
            S = P - O
            self.T = int(math.ceil((box + O) / S))
            w = _sine_window(P, O)
            self.window = np.outer(w, w).astype(np.float32)

    def _patches(self, count):
        img = self.rng.integers(0, self.n_images, count)
        pos = self.positions[self.rng.integers(0, len(self.positions), count)]
        ar = np.arange(self.P)
        iy = pos[:, 0, None, None] + ar[None, :, None]
        ix = pos[:, 1, None, None] + ar[None, None, :]
        patches = self.images[img[:, None, None], iy, ix]
        return patches - patches.mean(axis=(1, 2), keepdims=True)

    def sample(self, n):
        D, P, O, T = self.box, self.P, self.O, self.T
        patches = self._patches(n * T * T).reshape(n, T, T, P, P) * self.window
        if T == 1:
            return standardize(torch.from_numpy(np.ascontiguousarray(patches[:, 0, 0])))
        S = P - O
        L = (T - 1) * S + P
        canvas = np.zeros((n, L, L), dtype=np.float32)
        for a in range(T):
            for b in range(T):
                canvas[:, a * S:a * S + P, b * S:b * S + P] += patches[:, a, b]
        out = np.ascontiguousarray(canvas[:, O:O + D, O:O + D])
        return standardize(torch.from_numpy(out))


def real_noise_source(cfg, box, apix, rng):
    """Read up to `cfg.noise_images` images of `cfg.noise_stack`, resample them to `apix`."""
    from simcryo.io.particles import load_particles
    from simcryo.image.fourier import fourier_crop, fourier_pad
    try:
        pset = load_particles(cfg.noise_stack, apix=cfg.noise_apix or None)
    except SimcryoError as exc:  # the loader's advice names its own flag
        raise SimcryoError(f"noise stack: {str(exc).replace('--apix', '--noise-apix')}")
    m = min(pset.n, cfg.noise_images)
    idx = np.sort(rng.choice(pset.n, m, replace=False))
    imgs = torch.from_numpy(pset.images(idx))
    B = pset.box
    radius = cfg.noise_mask_radius or 0.4 * B
    new_B = int(round(B * pset.apix / apix / 2.0)) * 2
    if new_B < 16:
        raise SimcryoError(f"noise images ({B} px at {pset.apix:.3g} Å/px) shrink to {new_B} px "
                           f"at {apix:.3g} Å/px; too small to cut noise from")
    if new_B != B:
        imgs = fourier_crop(imgs, new_B) if new_B < B else fourier_pad(imgs, new_B)
        radius *= new_B / B
    info = dict(noise_stack=cfg.noise_stack, noise_images_used=int(m), noise_source_box=B,
                noise_source_apix=pset.apix, noise_resampled_box=new_B,
                noise_mask_radius_px=float(radius))
    src = RealNoise(imgs, radius, box, rng)
    info.update(noise_patch_px=src.P, noise_overlap_px=src.O, noise_tiles_per_axis=src.T)
    return src, info


# ---------------------------------------------------------------- driver

def simulate_batches(volume, apix, poses, ctf, noise_source, snr, batch, device,
                     junk_volume=None, generator=None):
    """Yield (start, particles, clean) float32 CPU tensor batches in particle order.

    `ctf` is a CTFParams or None; `noise_source.sample(n)` gives standardised noise. Junk
    (poses.kind, see simcryo.simulation.realistic) takes its signal from `junk_volume`
    (kind 'other'), from blobs drawn with `generator` (kind 'blob'), from a shift without
    wrap-around (kind 'offcentre') or none at all (kind 'empty': noise only)."""
    projector = Projector(volume.to(device))
    junk_projector = Projector(junk_volume.to(device)) if junk_volume is not None else None
    n = len(poses.label)
    kinds = poses.kinds()
    contrast = poses.contrast if poses.contrast is not None else np.ones(n)
    for s in range(0, n, batch):
        sl = slice(s, min(s + batch, n))
        posed = _signal(projector, junk_projector, poses, kinds[sl], sl, generator, device)
        signal = apply_ctf_padded(posed, ctf.take(np.arange(n)[sl]), apix) if ctf else posed
        var = signal.reshape(len(signal), -1).var(dim=1, unbiased=False)
        empty = torch.as_tensor(kinds[sl] == KINDS.index("empty"), device=device)
        if ((var <= 0) & ~empty).any():
            raise SimcryoError("a projection is empty (the map is empty or outside the box)")
        scale = torch.as_tensor(contrast[sl], dtype=torch.float32, device=device)
        scale = torch.where(empty, 0.0, scale / torch.sqrt(var / snr).clamp_min(1e-30))
        noise = noise_source.sample(len(signal)).to(device)
        particles = signal * scale[:, None, None] + noise
        clean = posed * scale[:, None, None]
        yield s, particles.cpu(), clean.cpu()


def _signal(projector, junk_projector, poses, kinds, sl, generator, device):
    """CTF-free signal of one batch: the posed projection of each particle's kind."""
    from simcryo.image.geometry import rotate_images, transform_images
    proj = projector.project(poses.rotmats[sl])
    other = torch.as_tensor(np.flatnonzero(kinds == KINDS.index("other")))
    if len(other):
        proj[other] = junk_projector.project(poses.rotmats[sl][other])
    psi = torch.as_tensor(poses.psi[sl], dtype=torch.float32, device=device)
    shift = torch.as_tensor(poses.shift[sl], dtype=torch.float32, device=device)
    posed = transform_images(proj, psi, shift)
    off = torch.as_tensor(np.flatnonzero(kinds == KINDS.index("offcentre")))
    if len(off):  # the box edge cuts the particle instead of wrapping it around
        posed[off] = realistic.shift_without_wrap(rotate_images(proj[off], -psi[off]),
                                                  -shift[off])
    blob = torch.as_tensor(np.flatnonzero(kinds == KINDS.index("blob")))
    if len(blob):
        posed[blob] = realistic.blob_images(len(blob), posed.shape[-1], generator, device)
    posed[torch.as_tensor(np.flatnonzero(kinds == KINDS.index("empty")))] = 0.0
    return posed


def reference_images(volume, class_rot, class_tilt, device):
    """One clean, centred, CTF-free projection per class at its central direction."""
    K = len(class_rot)
    R = euler_to_matrix(class_rot, class_tilt, np.zeros(K))
    return Projector(volume.to(device)).project(R).cpu()
