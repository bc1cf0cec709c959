"""Run-time plumbing shared by the commands: device, seeds, threads, progress, run log,
checkpoints."""
import json
import os
import platform
import random
import sys
import tempfile
import time

import numpy as np
import torch

from simcryo import __version__
from simcryo.errors import SimcryoError


def resolve_device(name):
    """'cpu', 'cuda', 'cuda:N' -> torch.device, with a clear error when CUDA is absent."""
    name = (name or "cpu").strip()
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SimcryoError(f"invalid device '{name}' (use cpu or cuda:N)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SimcryoError(f"device '{name}' requested but CUDA is not available "
                               "in this torch build; use --device cpu")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise SimcryoError(f"device '{name}' requested but only "
                               f"{torch.cuda.device_count()} CUDA device(s) exist")
    elif device.type != "cpu":
        raise SimcryoError(f"unsupported device '{name}' (use cpu or cuda:N)")
    return device


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def epoch_generator(seed, stream, epoch, device="cpu"):
    """A generator seeded from (seed, stream name, epoch): every epoch of every stream gets its
    own random numbers, so a run resumed at an epoch draws exactly what an uninterrupted run
    does."""
    g = torch.Generator(device=device)
    g.manual_seed((int(seed) * 1_000_003 + _stream_number(stream) * 10_007 + int(epoch))
                  % (2 ** 62))
    return g


def _stream_number(stream):
    # a fixed function of the name (the built-in hash() is salted per process)
    return sum((i + 1) * ord(c) for i, c in enumerate(stream))


def set_threads(n):
    """Use n CPU threads for torch (0 or None: leave torch's default)."""
    if n:
        torch.set_num_threads(int(n))


def log(msg, stream=None):
    print(msg, file=stream or sys.stdout, flush=True)


class Progress:
    """Prints `stage epoch i/n loss=... ETA` lines, at most every `min_interval` seconds."""

    def __init__(self, stage, total, min_interval=5.0, stream=None):
        self.stage, self.total = stage, max(int(total), 1)
        self.start = time.time()
        self.last = 0.0
        self.min_interval = min_interval
        self.stream = stream

    def update(self, done, force=False, **values):
        now = time.time()
        if not force and done < self.total and now - self.last < self.min_interval:
            return
        self.last = now
        elapsed = now - self.start
        eta = elapsed / max(done, 1e-9) * (self.total - done) if done else float("nan")
        fields = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in values.items())
        log(f"[{self.stage}] {done}/{self.total} {fields} elapsed={elapsed:.0f}s "
            f"eta={eta:.0f}s", self.stream)


class RunLog:
    """Collects what goes into run.json: command, config, versions, seed, timings, curves."""

    def __init__(self, command, config=None, **extra):
        self.data = {
            "command": command,
            "argv": sys.argv,
            "simcryo_version": __version__,
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "numpy": np.__version__},
            "host": platform.node(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "config": config or {},
            "timings_s": {},
            "curves": {},
        }
        self.data.update(extra)
        self._t0 = {}

    def start(self, name):
        self._t0[name] = time.time()

    def stop(self, name):
        self.data["timings_s"][name] = round(time.time() - self._t0.pop(name), 3)

    def curve(self, name, value):
        self.data["curves"].setdefault(name, []).append(float(value))

    def __setitem__(self, key, value):
        self.data[key] = value

    def __getitem__(self, key):
        return self.data[key]

    def write(self, path):
        self.data["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        atomic_write_text(path, json.dumps(self.data, indent=2, default=json_default))


def json_default(obj):
    """`json.dumps(default=...)` for numpy / torch scalars and arrays."""
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    return str(obj)


def atomic_write_text(path, text):
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp_")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def save_checkpoint(path, state):
    """Write a checkpoint atomically: a crash mid-write never leaves a truncated file."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    # torch derives the archive name from the file name: keep a non-dot stem and a suffix
    fd, tmp = tempfile.mkstemp(dir=d, prefix="tmp_ckpt_", suffix=".pt")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path, device="cpu"):
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except FileNotFoundError:
        raise SimcryoError(f"checkpoint not found: {path}")
    except Exception as exc:  # corrupted or from an incompatible version
        raise SimcryoError(f"cannot read checkpoint {path}: {exc}")


def ensure_output_dir(path):
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise SimcryoError(f"cannot create output folder {path}: {exc.strerror}")
    return path
