"""Data parallelism over particles with `torch.distributed`, launched by `torchrun`.

`torchrun --standalone --nproc_per_node N -m simcryo <command> ...` sets WORLD_SIZE, RANK and
LOCAL_RANK; `session()` (entered by simcryo.cli around every command) then joins the process
group: gloo for CPU tensors, and NCCL for CUDA tensors when this torch has CUDA and NCCL.
Without those variables nothing is initialised and every helper below is a no-op (world
size 1): a single process runs exactly the code it always ran.

Contract of a sharded stage: every rank holds the full per-particle arrays; each rank works
on `shard(n)` (a contiguous block), the per-class sums are `all_reduce_sum`-med and the
per-particle results exchanged with `share_rows`, so every rank sees the same statistics and
takes the same branches (a rank deciding differently would deadlock in the next collective).
Training is data parallel (the ResNet's; small networks train `replicated`, the whole
batch on every rank, where collectives cost more than the step): every rank draws the same batch, runs the network on its block
(`on_own_rows`, `gather_rows`: the loss is the whole batch's on every rank, BatchNorm too,
`sync_batch_norms`) and the gradients are summed before each step (`all_reduce_grads`), so
the ranks keep identical weights (torch's DDP wrapper averages the gradients, where a loss
over the gathered batch needs their sum).
Only rank 0 logs and writes outputs (`is_main`). A rank that raises exits non-zero and
torchrun stops the others; outputs are written atomically, completion marker last
(simcryo.outputs), so a failed job never leaves a complete-looking output.
"""
import contextlib
import functools
import os

import numpy as np
import torch
import torch.distributed as dist

from simcryo.errors import SimcryoError

_state = {"collectives": 0,  # collectives this process has entered (see error_prefix)
          "replicated": False}  # inside `replicated()`: every rank runs the whole work
# how gloo and NCCL report a peer that went away (any other error is a bug: it propagates)
PEER_GONE = ("closed by peer", "reset by peer", "broken pipe", "connection refused",
             "timed out", "timeout", "aborted")


def launched():
    """True when started by torchrun (or any launcher setting WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def process_rank():
    """torchrun's RANK of this process (0 without torchrun), also before `init` and after
    `shutdown` (the cli's error lines)."""
    return int(os.environ.get("RANK", "0")) if launched() else 0


def active():
    return dist.is_available() and dist.is_initialized()


def rank():
    return dist.get_rank() if active() else 0


def world_size():
    """The ranks sharing the work: 1 without torchrun, and inside `replicated()`."""
    return dist.get_world_size() if active() and not _state["replicated"] else 1


def local_rank():
    return int(os.environ.get("LOCAL_RANK", "0")) if active() else 0


def is_main():
    return rank() == 0


@contextlib.contextmanager
def replicated(*modules):
    """Every rank runs the block on the whole data, as one process, with no collective
    inside; on leaving it, rank 0's parameters and buffers of `modules` are broadcast, so
    the ranks hold the same network whatever the device's float order. For training small
    networks, whose step computes less than one collective waits (measured: a gloo
    all-reduce of 256 floats costs ~1.5 ms between 2 CPU processes, and a data-parallel step
    of the MLPs needs ~15 of them), where data parallelism is slower than one process."""
    outer = _state["replicated"]
    _state["replicated"] = True
    try:
        yield
    finally:
        _state["replicated"] = outer
    for module in modules:
        for t in list(module.parameters()) + list(module.buffers()):
            broadcast(t.data)


def _backend():
    if torch.cuda.is_available() and dist.is_nccl_available():
        return "cpu:gloo,cuda:nccl"  # each tensor goes through the backend of its device
    return "gloo"


def init():
    """Join torchrun's process group (env:// rendezvous); a no-op without WORLD_SIZE > 1."""
    if not launched() or active():
        return
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if local < torch.cuda.device_count():
        # one GPU per process: a bare --device cuda resolves to this rank's GPU
        torch.cuda.set_device(local)
    dist.init_process_group(backend=_backend())


def shutdown():
    if active():
        dist.destroy_process_group()


@contextlib.contextmanager
def session():
    """The process group for the duration of one command (see the module docstring)."""
    init()
    try:
        yield
        barrier()  # the ranks finish together: rank 0 has written the outputs by then
    finally:
        shutdown()


def local_device(device):
    """Under torchrun each process uses the GPU of its LOCAL_RANK (a `cuda:N` given on the
    command line names the device of a single process)."""
    if active() and device.type == "cuda":
        if local_rank() >= torch.cuda.device_count():
            raise RankError(f"torchrun started a process for GPU {local_rank()} but only "
                            f"{torch.cuda.device_count()} GPU(s) exist: give "
                            "--nproc_per_node at most the number of GPUs")
        return torch.device("cuda", local_rank())
    return device


def shard(n):
    """This rank's particle indices among n: a contiguous block (sizes differ by <= 1)."""
    w = world_size()
    r = rank() if w > 1 else 0
    return np.arange(n * r // w, n * (r + 1) // w)


class PeerLost(Exception):
    """A collective failed because another rank stopped (it raised, or was killed). That
    rank, or torchrun's failure report, says why: the cli exits quietly on this one."""


class RankError(SimcryoError):
    """A user-facing error of this rank alone (e.g. its GPU does not exist): printed by the
    rank that raises it, even before the first collective (see error_prefix)."""


def _collective():
    _state["collectives"] += 1
    return world_size() > 1


def _call(op, *args):
    try:
        op(*args)
    except RuntimeError as exc:
        text = str(exc).strip()
        if not any(p in text.lower() for p in PEER_GONE):
            raise
        raise PeerLost(text.splitlines()[0] if text else "") from exc


def error_prefix(exc=None):
    """How the cli reports the failure `exc` of this process: None to stay silent, else a
    tag. Before the first collective every rank has read the same inputs and fails the same
    check, so rank 0 alone prints it; after it (or for a RankError) a failure may be this
    rank's alone, so every failing rank prints its line, tagged with its rank."""
    r = process_rank()
    alone = bool(_state["collectives"]) or isinstance(exc, RankError)
    if not launched() or (r == 0 and not alone):
        return ""
    return f"(rank {r}) " if alone else None


def all_reduce_sum(tensor):
    """Sum `tensor` over the ranks, in place (complex tensors as their real view)."""
    if _collective():
        _call(dist.all_reduce, torch.view_as_real(tensor) if tensor.is_complex() else tensor)
    return tensor


def share_rows(tensor, rows):
    """After each rank wrote `tensor[rows[shard(len(rows))]]` (its block of `rows`), every
    rank holds all of `tensor[rows]`; other rows are left alone. Exact: each value is summed
    with zeros only. In place; returns `tensor`."""
    if world_size() == 1:
        return tensor
    rows = np.asarray(rows)
    mine = torch.as_tensor(rows[shard(len(rows))], dtype=torch.long)
    part = torch.zeros_like(tensor)
    part[mine] = tensor[mine]
    all_reduce_sum(part)
    rows = torch.as_tensor(rows, dtype=torch.long)
    tensor[rows] = part[rows]
    return tensor


def barrier():
    if _collective():
        _call(dist.barrier)


def main_only(fn):
    """`fn` on rank 0, a no-op elsewhere (progress lines come from rank 0 only)."""
    if is_main():
        return fn
    return lambda *args, **kwargs: None


def shard_blocks(n, size):
    """This rank's rows among n (`shard(n)`) in blocks of at most `size`."""
    rows = shard(n)
    for s in range(0, len(rows), size):
        yield rows[s:s + size]


def share_all(*tensors):
    """`share_rows` over all rows: after each rank filled its `shard(n)` rows of each
    (n, ...) tensor (or numpy array: shared in place through torch.from_numpy), every rank
    holds them all. Returns the first argument."""
    for t in tensors:
        share_rows(torch.from_numpy(t) if isinstance(t, np.ndarray) else t, np.arange(len(t)))
    return tensors[0]


def gather_rows(local, n):
    """All n rows of a batch of which this rank computed `local`, its `shard(n)` block
    (data parallelism: every rank then evaluates the same loss over the whole batch, the
    contrastive negatives of every rank included). The own block keeps its autograd graph,
    the others are constants, so the gradients summed over the ranks (`all_reduce_grads`)
    are the gradient of that loss, as one process computes it."""
    if world_size() == 1:
        return local
    lo, hi = n * rank() // world_size(), n * (rank() + 1) // world_size()
    full = local.new_zeros((n,) + tuple(local.shape[1:]))
    full[lo:hi] = local.detach()
    all_reduce_sum(full)
    return torch.cat([full[:lo], local, full[hi:]])


def on_own_rows(fn, batch):
    """fn(batch) for a row-wise `fn` (output row i from input row i), data parallel: `fn` on
    this rank's block of the rows, the other ranks' rows gathered (`gather_rows`)."""
    if world_size() == 1:
        return fn(batch)
    mine = torch.as_tensor(shard(len(batch)), device=batch.device)
    return gather_rows(fn(batch[mine]), len(batch))


def all_reduce_grads(params):
    """Sum the parameters' gradients over the ranks (one flat all-reduce per step)."""
    if world_size() == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = all_reduce_sum(torch.cat([g.reshape(-1) for g in grads]))
    for g, part in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(part.view_as(g))


class _RankSum(torch.autograd.Function):
    """Sum over the ranks whose backward sums the gradients over the ranks: each rank's
    gradient is that of its own rows of the batch, so the sum is the whole gradient."""

    @staticmethod
    def forward(ctx, tensor):
        return all_reduce_sum(tensor.clone())

    @staticmethod
    def backward(ctx, grad):
        return all_reduce_sum(grad.clone())


def _synced_batch_norm(bn, forward, x):
    """`bn` (training) with the mean and variance of the whole batch, every rank's block
    of it, as one process normalises (torch's SyncBatchNorm has no CPU path)."""
    if not (bn.training and world_size() > 1):
        return forward(x)
    dims = [0] + list(range(2, x.dim()))
    shape = [1, -1] + [1] * (x.dim() - 2)
    # one all-reduce forward and one backward (gloo's latency, ~1.2 ms a call on CPU, is
    # most of a small step): the sums of x and x^2 and the count, in float64 so that
    # E[x^2] - mean^2 keeps float32's precision
    c = x.shape[1]
    local = torch.cat([x.sum(dims).double(), x.square().sum(dims).double(),
                       x.new_full((1,), float(x.numel() // c), dtype=torch.float64)])
    total = _RankSum.apply(local)
    count = float(total[-1].detach())
    mean64 = total[:c] / count
    mean = mean64.to(x.dtype)
    var = (total[c:2 * c] / count - mean64.square()).clamp_min(0).to(x.dtype)
    centred = x - mean.view(shape)
    if bn.track_running_stats:
        with torch.no_grad():
            bn.num_batches_tracked += 1
            m = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            bn.running_mean.mul_(1 - m).add_(m * mean)
            bn.running_var.mul_(1 - m).add_(m * var * count / max(count - 1, 1))
    y = centred / (var + bn.eps).sqrt().view(shape)
    if bn.affine:
        y = y * bn.weight.view(shape) + bn.bias.view(shape)
    return y


def sync_batch_norms(module):
    """Make every BatchNorm of `module` normalise over the whole data-parallel batch under
    torchrun (a no-op in one process). Returns `module`."""
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.forward = functools.partial(_synced_batch_norm, m, m.forward)
    return module


def broadcast_object(obj):
    """Rank 0's `obj` (any picklable value) on every rank."""
    if not _collective():
        return obj
    box = [obj]
    _call(dist.broadcast_object_list, box, 0)
    return box[0]


def broadcast(tensor):
    """Rank 0's `tensor` on every rank, in place (a result every rank computed alike, made
    identical whatever the device's reduction order)."""
    if _collective():
        _call(dist.broadcast, torch.view_as_real(tensor) if tensor.is_complex() else tensor, 0)
    return tensor
