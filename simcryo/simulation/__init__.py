"""Simulation: volume projection, the built-in phantom, simulated particle stacks with truth."""
