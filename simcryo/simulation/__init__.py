"""Simulation: volume projection, the built-in phantom, simulated particle stacks with truth."""
from simcryo.simulation.phantom import make_phantom
from simcryo.simulation.projection import (Projector, angles_to_direction, axis_angle_matrix,
                                           direction_to_angles, euler_to_matrix,
                                           matrix_to_euler, min_angular_separation, project,
                                           random_rotations, view_directions)

__all__ = ["Projector", "angles_to_direction", "axis_angle_matrix", "direction_to_angles",
           "euler_to_matrix", "make_phantom", "matrix_to_euler", "min_angular_separation",
           "project", "random_rotations", "view_directions"]
