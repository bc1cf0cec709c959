"""Denoising networks.

`Generator` follows the layout of Tang et al.'s improved GAN used by the paper: a convolution
block, a stack of residual blocks and a sub-pixel convolution block. To be fast on CPUs the
convolution block starts with a space-to-depth step (`PixelUnshuffle`, lossless), so the residual
blocks run on a grid `scale` times coarser than the image and the sub-pixel block
(`PixelShuffle`) brings the result back to full resolution. With the defaults (scale 4, 32
channels, 4 residual blocks) the receptive field covers a whole 64 px box, which a denoiser at
SNR 0.1 needs: the evidence for a pixel is spread over the whole particle. No batch norm in the
generator (as in EDSR): it costs time at inference and is unnecessary for a regression net.

With `odd=True` (default) the generator has no bias terms and odd activations (learned soft
thresholding), so G(-x) = -G(x) exactly. Fed pure (symmetric) noise, its output then averages
to zero: the denoiser cannot turn noise into the reference it was trained on ("Einstein from
noise"), whatever it learned. The price is that it cannot use the particles' contrast sign as
a prior, which matters little once a particle is detectable.

`Discriminator` is the paper's five-layer convolutional network with batch normalisation and
LeakyReLU; it outputs a map of patch logits (PatchGAN), averaged in the loss.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class Shrink(nn.Module):
    """Soft-thresholding x - clip(x, -t, t) with a learned threshold t >= 0 per channel: an odd
    activation (the classical wavelet-shrinkage non-linearity)."""

    def __init__(self, channels):
        super().__init__()
        self.t = nn.Parameter(torch.full((1, channels, 1, 1), 0.05))

    def forward(self, x):
        t = self.t.abs()
        return x - torch.maximum(torch.minimum(x, t), -t)


def _act(channels, odd):
    return Shrink(channels) if odd else nn.PReLU(channels)


class ResidualBlock(nn.Module):
    def __init__(self, channels, odd=False):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=not odd)
        self.act = _act(channels, odd)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=not odd)

    def forward(self, x):
        return x + self.conv2(self.act(self.conv1(x)))


class Generator(nn.Module):
    """Image (B, 1, H, W) -> denoised image (B, 1, H, W); any H, W (reflect-padded to a
    multiple of `scale` inside)."""

    def __init__(self, channels=32, res_blocks=4, scale=4, odd=True):
        super().__init__()
        self.scale = int(scale)
        s2 = self.scale * self.scale
        self.conv_block = nn.Sequential(nn.PixelUnshuffle(self.scale),
                                        nn.Conv2d(s2, channels, 3, padding=1, bias=not odd),
                                        _act(channels, odd))
        self.res_blocks = nn.Sequential(*[ResidualBlock(channels, odd)
                                          for _ in range(res_blocks)])
        self.res_out = nn.Conv2d(channels, channels, 3, padding=1, bias=not odd)
        self.subpixel_block = nn.Sequential(nn.Conv2d(channels, s2, 3, padding=1, bias=not odd),
                                            nn.PixelShuffle(self.scale))

    def forward(self, x):
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.scale, (-w) % self.scale
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect")
        feat = self.conv_block(x)
        feat = feat + self.res_out(self.res_blocks(feat))
        return self.subpixel_block(feat)[..., :h, :w]


class Discriminator(nn.Module):
    """Five convolution layers, batch norm on the inner ones, LeakyReLU(0.2)."""

    def __init__(self, width=32):
        super().__init__()
        w = int(width)

        def block(cin, cout, stride, bn=True):
            layers = [nn.Conv2d(cin, cout, 4 if stride == 2 else 3, stride=stride, padding=1)]
            if bn:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            return layers

        self.net = nn.Sequential(*block(1, w, 2, bn=False), *block(w, 2 * w, 2),
                                 *block(2 * w, 4 * w, 2), *block(4 * w, 8 * w, 1),
                                 nn.Conv2d(8 * w, 1, 3, padding=1))

    def forward(self, x):
        return self.net(x)
