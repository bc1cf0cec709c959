"""Neural network building blocks of the engine (no torchvision)."""
from simcryo.models.resnet import BasicBlock, ResNet18, resnet18
from simcryo.models.heads import ClusterHeads, ProjectionHead
from simcryo.models.mlp import MLPEncoder

__all__ = ["BasicBlock", "ResNet18", "resnet18", "ClusterHeads", "ProjectionHead",
           "MLPEncoder"]
