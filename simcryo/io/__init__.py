"""Engine I/O: RELION STAR files, MRC stacks, particle sets."""
from simcryo.io.star import StarBlock, read_star, write_star
from simcryo.io.mrc import open_stack, read_apix, write_stack, StackWriter, read_volume, write_volume
from simcryo.io.particles import (CTFParams, ParticleSet, load_particles, write_particles,
                                  parse_image_name, image_keys)

__all__ = ["StarBlock", "read_star", "write_star", "open_stack", "read_apix", "write_stack",
           "StackWriter", "read_volume", "write_volume", "CTFParams", "ParticleSet", "load_particles",
           "write_particles", "parse_image_name", "image_keys"]
