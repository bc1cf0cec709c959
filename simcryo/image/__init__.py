"""Image operations shared by every stage: CTF, 2D geometry (RELION pose convention), Fourier helpers, masks and preprocessing."""
