"""Applying a trained denoiser: background-normalise, run the generator, undo the
normalisation, so the output keeps the input's units, offset and scale.

Under torchrun each rank denoises its block of the particles (distributed.shard) straight
into the output stack that rank 0 created (simcryo.io.mrc.StackRows)."""
import torch

from simcryo import distributed
from simcryo.denoise.noise import background_mask, normalize
from simcryo.denoise.pairs import ctf_signs, phase_flip
from simcryo.image.preprocess import check_not_constant


@torch.inference_mode()
def denoise_images(G, images, mask_radius, device=None, signs=None):
    """images: float32 tensor or array (n, box, box) -> denoised float32 tensor (n, box, box)
    on the CPU. signs: CTF signs (n, box, box//2+1) for a model trained phase-flipped."""
    device = device or next(G.parameters()).device
    x = torch.as_tensor(images, dtype=torch.float32).to(device)
    mask = background_mask(x.shape[-1], mask_radius, device)
    z, mean, std = normalize(x, mask)
    if signs is not None:
        z = phase_flip(z, signs.to(device))
    out = G(z[:, None])[:, 0]
    if signs is not None:
        out = phase_flip(out, signs.to(device))
    return (out * std[:, None, None] + mean[:, None, None]).cpu()


def denoise_particles(G, pset, mask_radius, writer, batch_size, device, on_batch=None,
                      flip=False):
    """Denoise this rank's particles of `pset` (all in one process) in input order into
    `writer` (`write(start, images)`: a StackWriter or StackRows); `flip`: the model works
    phase-flipped (needs pset.ctf). Returns the count denoised here."""
    done = 0
    for idx in distributed.shard_blocks(pset.n, batch_size):
        t = torch.from_numpy(pset.images(idx))
        check_not_constant(t, idx)
        signs = ctf_signs(pset.ctf.take(idx), pset.box, pset.apix, device) if flip else None
        writer.write(int(idx[0]), denoise_images(G, t, mask_radius, device, signs).numpy())
        done += len(idx)
        if on_batch:
            on_batch(done)
    return done

