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
Only rank 0 logs and writes outputs (`is_main`). A rank that raises exits non-zero and
torchrun stops the others; outputs are written atomically, completion marker last
(simcryo.outputs), so a failed job never leaves a complete-looking output.
"""
import contextlib
import os

import numpy as np
import torch
import torch.distributed as dist

from simcryo.errors import SimcryoError

_state = {"collectives": 0}  # collectives this process has entered (see error_prefix)
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
    return dist.get_world_size() if active() else 1


def local_rank():
    return int(os.environ.get("LOCAL_RANK", "0")) if active() else 0


def is_main():
    return rank() == 0


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
    w, r = world_size(), rank()
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
