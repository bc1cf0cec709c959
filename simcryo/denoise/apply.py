"""Applying a trained denoiser: background-normalise, run the generator, undo the
normalisation, so the output keeps the input's units, offset and scale."""
import torch

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
    """Denoise every particle of `pset` in input order into `writer` (a StackWriter);
    `flip`: the model works phase-flipped (needs pset.ctf)."""
    done = 0
    for idx, imgs in pset.iter_batches(batch_size):
        t = torch.from_numpy(imgs)
        check_not_constant(t, idx)
        signs = ctf_signs(pset.ctf.take(idx), pset.box, pset.apix, device) if flip else None
        writer.write(done, denoise_images(G, t, mask_radius, device, signs).numpy())
        done += len(idx)
        if on_batch:
            on_batch(done)
    return done
