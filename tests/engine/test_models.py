import pytest
import torch

from simcryo.models import ClusterHeads, ProjectionHead, ResNet18, resnet18


@pytest.mark.parametrize("stem,box", [("small", 16), ("small", 32), ("strided", 64),
                                      ("imagenet", 64)])
def test_resnet18_single_channel_shapes(stem, box):
    torch.manual_seed(0)
    net = resnet18(width=4, stem=stem)
    out = net(torch.randn(3, 1, box, box))
    assert out.shape == (3, 32) and net.out_dim == 32
    assert torch.isfinite(out).all()


def test_resnet18_has_eight_blocks_and_width_scales_parameters():
    small, wide = ResNet18(width=8), ResNet18(width=16)
    assert len(small.layers) == 8
    n_small = sum(p.numel() for p in small.parameters())
    n_wide = sum(p.numel() for p in wide.parameters())
    assert 3.5 < n_wide / n_small < 4.5  # conv weights grow with width^2
    with pytest.raises(ValueError):
        ResNet18(stem="nope")


def test_min_box_per_stem():
    assert ResNet18(width=4, stem="small").min_box() == 16
    assert ResNet18(width=4, stem="strided").min_box() == 32


def test_resnet_gradients_reach_the_stem():
    net = resnet18(width=4)
    net(torch.randn(4, 1, 16, 16)).sum().backward()
    assert net.stem[0].weight.grad.abs().sum() > 0


def test_heads():
    proj = ProjectionHead(32, 8)
    z = proj(torch.randn(5, 32))
    assert z.shape == (5, 8)
    assert torch.allclose(z.norm(dim=1), torch.ones(5), atol=1e-5)
    heads = ClusterHeads(32, 4, n_heads=3)
    assert heads(torch.randn(5, 32)).shape == (3, 5, 4)
