"""Cubic volume resampling, one implementation each. Volumes are (D, D, D) indexed [z, y, x]
with the centre at voxel (D//2, D//2, D//2) (RELION); every function here keeps that centre,
so a map stays centred (and its projections too) whatever box and pixel size it is brought to.
"""
import torch

from simcryo.errors import SimcryoError


def _centred_copy(src, size):
    """Crop or zero-pad (D, D, D) `src` to (size,)*3 about index D//2 -> size//2 (the common
    centred cube is copied)."""
    D = src.shape[0]
    out = torch.zeros((size,) * 3, dtype=src.dtype, device=src.device)
    m = min(D, size)
    si, so = D // 2 - m // 2, size // 2 - m // 2
    out[so:so + m, so:so + m, so:so + m] = src[si:si + m, si:si + m, si:si + m]
    return out


def fourier_resize_volume(volume, new_box):
    """Resample (D, D, D) to (new_box,)*3 voxels covering the same physical extent (pixel size
    times D / new_box) by cropping / zero-padding its Fourier transform; voxel values keep
    their scale. float32 out."""
    vol = torch.as_tensor(volume, dtype=torch.float32)
    D = vol.shape[0]
    if new_box == D:
        return vol
    # ifftshift puts the centre voxel at index 0, the origin of the FFT, so the resampling
    # scales distances from the box centre (not from voxel 0) and the centre stays put
    spec = torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(vol.double())))
    out = torch.fft.ifftn(torch.fft.ifftshift(_centred_copy(spec, new_box)))
    return (torch.fft.fftshift(out).real * (new_box / D) ** 3).float()


def resample_volume(volume, vol_apix, apix, box):
    """Bring a cubic volume at `vol_apix` Å/px to `apix` Å/px (Fourier resampling; skipped
    when vol_apix is 0/None or within 0.1 %) and then to a `box` px cube (centred crop / pad in
    real space). The voxel count is rounded, so the pixel size reached is
    vol_apix * D / round(D * vol_apix / apix)."""
    D = volume.shape[0]
    if vol_apix and abs(vol_apix / apix - 1.0) > 1e-3:
        new = int(round(D * vol_apix / apix))
        if new < 4:
            raise SimcryoError(f"volume too small after resampling to {apix:g} Å/px")
        volume = fourier_resize_volume(volume, new)
    if volume.shape[0] != box:
        volume = _centred_copy(volume, box)
    return volume.contiguous()
