"""Heads on top of the backbone: SimCLR projection and SCAN clustering heads."""
import torch
from torch import nn
import torch.nn.functional as F


class ProjectionHead(nn.Module):
    """SimCLR MLP: features -> hidden -> out_dim, L2-normalised."""

    def __init__(self, in_dim, out_dim=128, hidden=None):
        super().__init__()
        hidden = hidden or in_dim
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden),
                                 nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))

    def forward(self, h):
        return F.normalize(self.net(h), dim=1)


class ClusterHeads(nn.Module):
    """Several independent linear heads features -> K logits (SCAN keeps the best one)."""

    def __init__(self, in_dim, k, n_heads=1):
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(in_dim, k) for _ in range(n_heads))

    def forward(self, h):
        """Returns logits of shape (n_heads, n, K)."""
        return torch.stack([head(h) for head in self.heads])
