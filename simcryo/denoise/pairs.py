"""Training pairs for the reference-guided denoiser, made on the fly.

clean  = shift(CTF * projection(volume, random orientation)) * scale * polarity
noisy  = clean + noise (synthesised with the data's background noise spectrum)
Both are then normalised with the *noisy* image's background statistics, exactly as real
particles are at inference, so the network sees inputs distributed like the data, and, with
`phase_flip`, both are phase-flipped with the pair's CTF: the network then works on
|CTF|-filtered signal (localised, defocus-independent phases) and `apply` flips its output
back, which restores each particle's exact CTF fringes from its known defocus.

The target is the CTF-modulated clean projection, not the CTF-corrected one: the denoiser
only removes noise and leaves the image formation (CTF, envelope) untouched, so (1) its
output stays a valid particle image for downstream phase flipping / Wiener averaging, (2) it
never has to invert the CTF at its zeros, where no information exists, and (3) the
self-supervised mode, which can only estimate E[signal | data] = the CTF-modulated signal,
produces the same quantity, so the two modes are interchangeable and comparable.

`scale` makes the in-mask signal power of the pairs equal to the one measured on the data and
`polarity` (+1/-1) matches the data's contrast (particles bright or dark); both are fixed by
`calibrate`, which also removes from the noise spectrum the part that is delocalised signal
(the background periodogram of the scaled projections).

Data parallel (simcryo.distributed): `sample(n, generator, rows)` draws every random number
of the n pairs, as one process does, and builds only the pairs `rows`, this rank's block of
the batch; `refresh` projects this rank's block of the bank and shares it.
"""
import numpy as np
import torch

from simcryo import distributed
from simcryo.denoise.noise import normalize, remove_signal
from simcryo.errors import SimcryoError
from simcryo.image import ctf as ctf_mod
from simcryo.image.fourier import shift_images
from simcryo.image.mask import background_stats


def ctf_signs(ctf_params, box, apix, device=None):
    """Signs of the CTFs (n, box, box//2+1), rfft2 layout; +1 where the CTF is 0."""
    c = ctf_mod.ctf_2d(ctf_params, box, apix, device=device, rfft=True)
    return torch.where(c < 0, -1.0, 1.0).to(torch.float32)


def phase_flip(images, signs):
    """Multiply the spectra of (n, box, box) images by CTF signs (rfft2 layout). An
    involution that leaves stationary noise statistically unchanged; it turns the CTF
    into |CTF|, a zero-phase filter, so the particle's signal is no longer delocalised and
    has the same phases whatever the defocus."""
    box = images.shape[-1]
    return torch.fft.irfft2(torch.fft.rfft2(images) * signs, s=(box, box))


class ReferencePairs:
    """Draws (noisy, clean) pairs, both (n, 1, box, box), normalised like the data."""

    def __init__(self, volume, noise_model, mask, apix, ctf_params=None, signal_power=1.0,
                 max_shift=0.0, empty_fraction=0.0, projector=None, rotations=None,
                 phase_flip=False):
        from simcryo.simulation import project, random_rotations
        self.volume = volume
        self.noise = self.raw_noise = noise_model
        self.mask = mask
        self.box = mask.shape[-1]
        self.apix = float(apix)
        self.ctf_params = ctf_params
        self.signal_power = float(signal_power)
        self.max_shift = float(max_shift)
        self.empty_fraction = float(empty_fraction)
        self.phase_flip = bool(phase_flip)
        self.projector = projector or project
        self.rotations = rotations or random_rotations
        self.device = volume.device
        self.scale = 1.0
        self.polarity = 1.0
        self.bank = None

    def refresh(self, n, generator):
        """Project the volume at n fresh random orientations into the bank that `clean`
        draws from (projecting every pair costs more than the network step); under
        torchrun each rank projects its block of the orientations."""
        rot = self.rotations(n, generator=generator)
        mine = distributed.shard(n)
        own = self.projector(self.volume, rot[mine].to(self.device))
        bank = own.new_zeros((n,) + tuple(own.shape[1:]))
        bank[mine] = own
        self.bank = distributed.share_all(bank)

    def projections(self, n, generator, rows=None):
        """n projections (or those of `rows` among them): from the bank, each turned by a
        random multiple of 90 degrees (an exact in-plane rotation, i.e. another valid view),
        or fresh when no bank."""
        if self.bank is None:
            rot = _own(self.rotations(n, generator=generator), rows).to(self.device)
            return self.projector(self.volume, rot)
        pick = _own(torch.randint(len(self.bank), (n,), generator=generator), rows)
        turns = _own(torch.randint(4, (n,), generator=generator), rows)
        proj = self.bank[pick]
        for k in range(1, 4):
            sel = (turns == k).nonzero()[:, 0]
            if len(sel):
                proj[sel] = torch.rot90(proj[sel], k, dims=(-2, -1))
        return proj

    def clean(self, n, generator, with_ctf=False, rows=None):
        """Unscaled CTF-modulated, shifted projections (n, box, box) [and their CTFParams or
        None]; only those of `rows` among the n when given."""
        proj = self.projections(n, generator, rows)
        if self.max_shift > 0:
            shifts = (torch.rand((n, 2), generator=generator) * 2 - 1) * self.max_shift
            proj = shift_images(proj, _own(shifts, rows).to(self.device))
        ctf = None
        if self.ctf_params is not None and len(self.ctf_params):
            idx = torch.randint(len(self.ctf_params), (n,), generator=generator).numpy()
            ctf = self.ctf_params.take(_own(idx, rows))
            proj = ctf_mod.apply_ctf_padded(proj, ctf, self.apix)
        return (proj, ctf) if with_ctf else proj

    def calibrate(self, data_mean_image=None, n=256, generator=None):
        """Fix `scale` (signal power) and `polarity` (contrast sign) from the data.

        data_mean_image: mean of the background-normalised particles (box, box) or None."""
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        c = self.clean(n, generator)
        c = c - background_stats(c, outside=self.mask)[0][:, None, None]
        # the estimator used on the data (`noise.signal_power`): inside minus background
        power = float((c[:, ~self.mask] ** 2).mean() - (c[:, self.mask] ** 2).mean())
        if power <= 0:
            raise SimcryoError("the reference volume projects to empty images; check the map")
        self.scale = float(np.sqrt(max(self.signal_power, 0.0) / power))
        if data_mean_image is not None:
            inside = ~self.mask
            corr = float((c.mean(0)[inside] * data_mean_image.to(c.device)[inside]).sum())
            self.polarity = -1.0 if corr < 0 else 1.0
        # the data's background holds CTF-delocalised signal too: keep only the noise
        self.noise = remove_signal(self.raw_noise.psd, c * self.scale, self.mask)
        return self.scale, self.polarity

    def sample(self, n, generator, rows=None):
        """n (noisy, clean) pairs, or only those of `rows` among them (the same pairs one
        process draws: every random number of the n is drawn)."""
        clean, ctf = self.clean(n, generator, with_ctf=True, rows=rows)
        clean = clean * (self.scale * self.polarity)
        if self.empty_fraction > 0:
            keep = _own(torch.rand(n, generator=generator) >= self.empty_fraction, rows)
            clean = clean * keep.to(clean)[:, None, None]
        noisy = clean + self.noise.sample(n, generator, rows)
        noisy, mean, std = normalize(noisy, self.mask)
        clean = (clean - mean[:, None, None]) / std[:, None, None]
        if self.phase_flip and ctf is not None:
            signs = ctf_signs(ctf, self.box, self.apix, self.device)
            noisy, clean = phase_flip(noisy, signs), phase_flip(clean, signs)
        return noisy[:, None], clean[:, None]

    def state_dict(self):
        return {"scale": self.scale, "polarity": self.polarity}


def _own(values, rows):
    """`values` (one per pair of a batch) restricted to `rows` (None: all)."""
    return values if rows is None else values[rows]
