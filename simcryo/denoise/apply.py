"""Applying a trained denoiser: background-normalise, run the generator, undo the
normalisation, so the output keeps the input's units, offset and scale."""
import torch

from simcryo.denoise.noise import background_mask, background_stats
from simcryo.preprocess import check_not_constant


@torch.inference_mode()
def denoise_images(G, images, mask_radius, device=None):
    """images: float32 tensor or array (n, box, box) -> denoised float32 tensor (n, box, box)
    on the CPU."""
    device = device or next(G.parameters()).device
    x = torch.as_tensor(images, dtype=torch.float32).to(device)
    mask = background_mask(x.shape[-1], mask_radius, device)
    mean, std = background_stats(x, mask)
    z = (x - mean[:, None, None]) / std[:, None, None]
    out = G(z[:, None])[:, 0]
    return (out * std[:, None, None] + mean[:, None, None]).cpu()


def denoise_particles(G, pset, mask_radius, writer, batch_size, device, on_batch=None):
    """Denoise every particle of `pset` in input order into `writer` (a StackWriter)."""
    done = 0
    for idx, imgs in pset.iter_batches(batch_size):
        t = torch.from_numpy(imgs)
        check_not_constant(t, idx)
        writer.write(done, denoise_images(G, t, mask_radius, device).numpy())
        done += len(idx)
        if on_batch:
            on_batch(done)
    return done
