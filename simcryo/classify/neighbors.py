"""Stage 2: top-k cosine neighbours, in blocks on the device (memory O(N*k), plus one
block's similarities, at most BLOCK_VALUES whatever N). Under torchrun each rank answers the
queries of its block of the rows, against all rows."""
import numpy as np
import torch
import torch.nn.functional as F

from simcryo import distributed

BLOCK_VALUES = 1 << 25   # similarities held at once (128 MB); a block of rows fits in it


def knn_cosine(features, k, device="cpu", block=1024, index_dtype=np.int64,
               similarities=True):
    """Indices (N, k) of each row's k most similar other rows (cosine), most similar first,
    in `index_dtype`, and their similarities (N, k) (None with `similarities` False: at 10^5
    rows and k = 200, int64 indices and float32 similarities would be 240 MB where int32
    indices alone are 80 MB). The row itself is excluded."""
    feats = F.normalize(torch.as_tensor(np.asarray(features), dtype=torch.float32,
                                        device=device), dim=1)
    n = feats.shape[0]
    k = int(min(k, n - 1))
    block = max(1, min(block, BLOCK_VALUES // max(n, 1)))
    idx = np.empty((n, k), index_dtype)
    sim = np.empty((n, k), np.float32) if similarities else None
    for rows in distributed.shard_blocks(n, block):
        s, e = int(rows[0]), int(rows[-1]) + 1
        sims = feats[s:e] @ feats.T
        sims[torch.arange(e - s, device=device), torch.arange(s, e, device=device)] = -float("inf")
        v, i = sims.topk(k, dim=1)
        idx[s:e] = i.cpu().numpy()
        if similarities:
            sim[s:e] = v.cpu().numpy()
    distributed.share_all(*(a for a in (idx, sim) if a is not None))
    return idx, sim


def neighbor_purity(neighbors, labels, k=10):
    """Share of the top-k neighbours that have the same (true) label as the anchor."""
    labels = np.asarray(labels)
    nb = np.asarray(neighbors)[:, :k]
    return float((labels[nb] == labels[:, None]).mean())
