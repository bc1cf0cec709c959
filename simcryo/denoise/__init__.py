"""Particle denoising before clustering (`simcryo denoise`).

Two modes, one generator architecture (`networks.Generator`: convolution block, residual
blocks, sub-pixel convolution block, as in the paper's improved GAN):

- reference-guided (the paper's method, `pairs` + `trainers.ReferenceTrainer`): a GAN trained
  on pairs made on the fly from projections of a user volume at uniformly random orientations,
  modulated by CTFs drawn from the data's own CTF parameters, randomly shifted, scaled to the
  data's measured signal power and contrast, plus noise synthesised with the power spectrum
  measured on the data's background (`noise`). No clean data is needed. The target is the
  CTF-modulated clean projection (denoising, not CTF correction).
- self-supervised (`trainers.SelfTrainer`), for when no volume exists: Monte-Carlo SURE with
  the same background noise model (default) or Neighbor2Neighbor, trained on the particles alone.
  Why these and not a blind-spot network: see `trainers`.

Both normalise each image by its background (outside the mask) and undo that afterwards, so
the output has the input's units.
"""
from simcryo.denoise.apply import denoise_images, denoise_particles
from simcryo.denoise.config import DenoiseConfig
from simcryo.denoise.networks import Discriminator, Generator
from simcryo.denoise.trainers import ReferenceTrainer, SelfTrainer

__all__ = ["DenoiseConfig", "Discriminator", "Generator", "ReferenceTrainer", "SelfTrainer",
           "denoise_images", "denoise_particles"]
