"""Run-time plumbing shared by the commands: device, seeds, threads, progress, run log,
checkpoints (atomic, loaded without unpickling code)."""
import json
import os
import platform
import pickle
import random
import shutil
import sys
import time
import warnings

import numpy as np
import torch

from simcryo import __version__
from simcryo.errors import SimcryoError, warn
from simcryo.outputs import atomic_path, atomic_write_text  # noqa: F401 (re-exported)


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


def warn_empty_classes(sizes):
    """A warning naming the classes without particles (`sizes`: particles per class)."""
    empty = [k + 1 for k, size in enumerate(sizes) if size == 0]
    if empty:
        warn(f"{len(empty)} of {len(sizes)} classes came out empty (class "
             f"{', '.join(map(str, empty[:10]))}{', ...' if len(empty) > 10 else ''}); "
             "their averages are blank")


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


def plain(obj):
    """`obj` with numpy values made plain numbers / tensors, so that the file loads with
    `torch.load(weights_only=True)` (which refuses every other Python object)."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain(v) for v in obj)
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, (np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, np.floating):
        return float(obj)
    return obj


def save_checkpoint(path, state):
    """Write a checkpoint atomically: a crash mid-write never leaves a truncated file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as tmp:
        try:
            torch.save(plain(state), tmp)
        except RuntimeError as exc:  # torch reports a failed write (full disk) this way
            raise _write_error(path, exc) from None


def _write_error(path, exc):
    if shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free < 1 << 20:
        return SimcryoError(f"no space left on the device: {path}")
    return SimcryoError(f"cannot write {path}: {_first_line(exc)}")


def _first_line(exc):
    """The first sentence of a library's (often multi-line) error message."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0]


def load_checkpoint(path, device="cpu"):
    """A checkpoint or model file, unpickled with `weights_only=True`: tensors, numbers,
    strings and containers only, so a planted pickle cannot run code."""
    if not os.path.isfile(path):
        raise SimcryoError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of foreign files
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError:
        raise SimcryoError(f"refused to load {path}: it holds Python objects, not only "
                           "tensors and numbers (not written by simcryo, or tampered with)") \
            from None
    except Exception as exc:  # truncated, corrupted or from an incompatible version
        raise SimcryoError(f"cannot read {path} (truncated or corrupted?): "
                           f"{_first_line(exc)}") from None


def ensure_output_dir(path):
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise SimcryoError(f"cannot create output folder {path}: {exc.strerror}")
    return path
