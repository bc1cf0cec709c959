"""The invariant encoder: an MLP on rotation-invariant particle descriptors."""
from torch import nn


class MLPEncoder(nn.Module):
    """in_dim -> hidden -> hidden -> out_dim (batch-normalised ReLU layers); its output is
    the contrastive space and the feature that SCAN clusters."""

    def __init__(self, in_dim, hidden=512, out_dim=128):
        super().__init__()
        self.out_dim = out_dim
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, out_dim))

    def forward(self, x):
        return self.net(x)
