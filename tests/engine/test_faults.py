"""Fault injection (issue 16): kill -9, full and read-only disks, truncated and malicious
checkpoints, changed inputs on resume, concurrent runs, malformed inputs.

Each case asserts the exit code, the one-line message and the state of the output folder:
nothing partial (no temporary, no run.json, the mark of a finished run), nothing lost.
Tiny data (48 particles of 32 px, a 4-px-wide network), as tests/engine/test_classify.py."""
import fcntl
import json
import os
import pickle
import shutil
import subprocess
import sys

import mrcfile
import numpy as np
import pytest
import torch

from simcryo import cli
from simcryo.classify.checkpoint import STAGE_PARAMS, UNCHECKED
from simcryo.classify.config import ClassifyConfig
from simcryo.io import read_star, write_star
from simcryo.io.mrc import write_stack
from simcryo.outputs import COMPLETE, LOCK, TMP_PREFIX

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TINY = dict(K=3, width=4, working_box=16, batch_size=32, pretext_epochs=2, tta_rotations=2,
            knn=5, scan_heads=2, scan_epochs=3, selflabel_epochs=2, average_iterations=1,
            refine_iterations=2, refine_align_iterations=1, refine_angles=12, threads=1)
DENOISE = dict(channels=8, res_blocks=1, batch_size=16, images_per_epoch=32, val_images=16,
               stats_images=48, epochs=1, threads=1)


def _flags(values):
    out = []
    for k, v in values.items():
        out += ["--" + k.replace("_", "-"), str(v)]
    return out


def classify_argv(inp, out, *extra, **over):
    return ["classify", "--i", str(inp), "--o", str(out), *_flags(dict(TINY, **over)),
            *map(str, extra)]


def simcryo(*argv):
    return cli.main([str(a) for a in argv])


def run_cli(capsys, argv):
    """(exit code, stderr lines) of `simcryo ARGV` run in this process."""
    capsys.readouterr()
    rc = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.err.strip().splitlines(), captured.out


def one_line_error(capsys, argv, fragment, command="classify"):
    rc, err, _ = run_cli(capsys, argv)
    assert rc == 2, err
    assert len(err) == 1 and err[0].startswith(f"simcryo {command}: error:"), err
    assert fragment in err[0], err
    return err[0]


def leftovers(folder):
    """Temporaries and partial files a failed or killed run could leave."""
    if not os.path.isdir(folder):
        return []
    return sorted(f for f in os.listdir(folder)
                  if f.startswith((TMP_PREFIX, "tmp_ckpt_", ".tmp_")) or ".tmp" in f
                  or os.path.getsize(os.path.join(folder, f)) == 0 and f != LOCK)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    d = tmp_path_factory.mktemp("sim")
    rc = simcryo("simulate", "--o", str(d), "--box", "32", "--classes", "3",
                   "--per-class", "16", "--snr", "1", "--batch", "64", "--seed", "3",
                   "--threads", "1")
    assert rc == 0
    return d


@pytest.fixture(scope="module")
def star(sim):
    return sim / "particles.star"


@pytest.fixture(scope="module")
def full(star, tmp_path_factory):
    """An uninterrupted run: the reference every resumed run must equal."""
    out = tmp_path_factory.mktemp("full") / "o"
    assert simcryo(*classify_argv(star, out)) == 0
    return out


def same_result(a, b):
    """The results of two classify folders are identical (poses, classes, averages, metrics;
    not the timings)."""
    ta, tb = read_star(str(a / "particles.star"))["particles"], \
        read_star(str(b / "particles.star"))["particles"]
    for label in ("rlnClassNumber", "rlnMaxValueProbDistribution", "rlnAnglePsi",
                  "rlnOriginXAngst", "rlnOriginYAngst"):
        assert ta[label] == tb[label], label
    assert np.array_equal(np.load(a / "probabilities.npy"), np.load(b / "probabilities.npy"))
    assert np.array_equal(np.load(a / "features.npy"), np.load(b / "features.npy"))
    with mrcfile.open(a / "class_averages.mrcs") as ma, mrcfile.open(b / "class_averages.mrcs") as mb:
        assert np.array_equal(ma.data, mb.data)
    ja, jb = (json.loads((d / COMPLETE).read_text()) for d in (a, b))
    assert ja["metrics"] == jb["metrics"]  # before_refine_acc/nmi included
    assert ja["curves"] == jb["curves"] and ja["class_sizes"] == jb["class_sizes"]


# ----------------------------------------------------------------------------- kill -9
KILLER = """
import os, signal, sys
target, nth = os.environ["KILL_AT"], int(os.environ["KILL_NTH"])
real, count = os.replace, [0]

def replace(src, dst):  # killed with the file written under its temporary name
    if os.path.basename(dst) == target:
        count[0] += 1
        if count[0] == nth:
            os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst)

os.replace = replace
from simcryo.cli import main
sys.exit(main(sys.argv[1:]))
"""


# (file being moved into place when killed, occurrence): the stage it is in. Saves:
# pretext epochs 1-2, features 3, scan 4-6, self-label 7-8, refine 9-12
KILLS = {"preprocess": ("preprocessed.f32", 1), "pretext": ("checkpoint.pt", 1),
         "features": ("features.npy", 1), "scan": ("checkpoint.pt", 5),
         "selflabel": ("checkpoint.pt", 8), "refine": ("checkpoint.pt", 10),
         "outputs": ("class_averages.mrcs", 1), "run.json": (COMPLETE, 1)}


@pytest.mark.parametrize("stage", list(KILLS))
def test_kill_9_then_resume_gives_the_uninterrupted_result(star, full, tmp_path, stage,
                                                           capsys):
    out = tmp_path / "o"
    target, nth = KILLS[stage]
    env = dict(os.environ, KILL_AT=target, KILL_NTH=str(nth), OMP_NUM_THREADS="1",
               PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-c", KILLER, *classify_argv(star, out)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    assert not (out / COMPLETE).exists()  # not marked finished
    assert any(f.startswith(TMP_PREFIX) for f in os.listdir(out))  # killed mid-write
    if stage != "preprocess":  # align refuses the unfinished folder
        one_line_error(capsys, ["align", "--i", out / "particles.star", "--o",
                                tmp_path / "a"], "did not finish", "align")
    rc, err, log = run_cli(capsys, classify_argv(star, out, "--resume"))
    assert rc == 0, err
    if stage == "preprocess":
        assert "no checkpoint.pt" in log
    assert leftovers(out) == [] and not (out / "preprocessed.f32").exists()
    same_result(full, out)


# ----------------------------------------------------------------------------- disks
@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of a given size (skipped where mounting is not allowed)."""
    mounted = []

    def mount(size, options=""):
        d = tmp_path / f"disk{len(mounted)}"
        d.mkdir()
        opts = f"size={size}" + (f",{options}" if options else "")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(d)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or 'not allowed'})")
        mounted.append(d)
        return d

    yield mount
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


@pytest.mark.parametrize("size, fragment", [
    ("40k", "not enough free disk space"),  # the cache (49 kB) does not fit: checked first
    ("200k", "no space left on the device"),  # the cache fits, the checkpoint does not
])
def test_full_disk_gives_one_line_and_nothing_partial_then_resume_works(
        star, full, small_disk, size, fragment, capsys):
    disk = small_disk(size)
    out = disk / "o"
    one_line_error(capsys, classify_argv(star, out), fragment)
    assert leftovers(out) == [] and not (out / COMPLETE).exists()
    assert not (out / "preprocessed.f32").exists() and not (out / "features.npy").exists()
    subprocess.run(["mount", "-o", "remount,size=16m", str(disk)], check=True)
    rc, err, _ = run_cli(capsys, classify_argv(star, out, "--resume"))
    assert rc == 0, err
    same_result(full, out)


def test_read_only_output_gives_one_line(star, full, small_disk, capsys):
    disk = small_disk("1m", "ro")
    one_line_error(capsys, classify_argv(star, disk / "o"), "Read-only file system")
    one_line_error(capsys, classify_argv(star, disk), "cannot write to output folder")
    one_line_error(capsys, ["align", "--i", full / "particles.star", "--o", disk / "a"],
                   "Read-only file system", "align")
    one_line_error(capsys, ["denoise", "train", "--i", star, "--o", disk, *_flags(DENOISE)],
                   "cannot write to output folder", "denoise")
    assert os.listdir(disk) == []


def test_denoise_and_align_on_a_full_disk(star, full, small_disk, tmp_path, capsys):
    disk = small_disk("24k")
    model = tmp_path / "model"
    assert simcryo("denoise", "train", "--i", star, "--o", model, *_flags(DENOISE)) == 0
    # the denoised stack (48 x 32 x 32 x 4 = 196 kB) cannot fit: refused before any work
    one_line_error(capsys, ["denoise", "apply", "--i", star, "--model", model, "--o",
                            disk / "d"], "not enough free disk space", "denoise")
    assert leftovers(disk / "d") == [] and not (disk / "d" / COMPLETE).exists()
    rc, err, _ = run_cli(capsys, ["align", "--i", full / "particles.star", "--o", disk / "a",
                                  "--iterations", "1", "--final-iterations", "0",
                                  "--threads", "1"])
    assert rc == 2 and len(err) == 1 and "space" in err[0], err
    assert leftovers(disk / "a") == [] and not (disk / "a" / COMPLETE).exists()


# ----------------------------------------------------------------------------- checkpoints
@pytest.fixture
def interrupted(star, tmp_path):
    """A classify folder killed in the scan stage."""
    out = tmp_path / "int"
    env = dict(os.environ, KILL_AT="checkpoint.pt", KILL_NTH="5", OMP_NUM_THREADS="1",
               PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-c", KILLER, *classify_argv(star, out)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    return out


def folder_state(folder):
    """Size and modification time of every result file (not the lock, rewritten by each
    run, nor the cache, which a failed run removes and a resume rebuilds)."""
    return {f: (os.path.getsize(folder / f), os.stat(folder / f).st_mtime_ns)
            for f in os.listdir(folder)
            if not f.startswith(TMP_PREFIX) and f not in (LOCK, "preprocessed.f32")}


def test_truncated_checkpoint_gives_one_line(star, interrupted, capsys):
    ckpt = interrupted / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    before = folder_state(interrupted)
    one_line_error(capsys, classify_argv(star, interrupted, "--resume"),
                   "truncated or corrupted")
    assert folder_state(interrupted) == before and leftovers(interrupted) == []


class Evil:
    """A pickle whose loading runs a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("fmt", ["torch", "pickle"])
def test_malicious_pickles_run_no_code(star, tmp_path, fmt, capsys):
    marker = tmp_path / "PWNED"

    def plant(path):
        payload = {"format": 2, "backbone": Evil(marker)}
        if fmt == "torch":
            torch.save(payload, path)
        else:
            with open(path, "wb") as fh:
                pickle.dump(payload, fh)

    out = tmp_path / "c"
    out.mkdir()
    plant(out / "checkpoint.pt")
    one_line_error(capsys, classify_argv(star, out, "--resume"), "refused to load")
    model = tmp_path / "m"
    model.mkdir()
    plant(model / "model.pt")
    one_line_error(capsys, ["denoise", "apply", "--i", star, "--model", model, "--o",
                            tmp_path / "d"], "refused to load", "denoise")
    plant(model / "checkpoint.pt")
    one_line_error(capsys, ["denoise", "train", "--i", star, "--o", model, "--resume",
                            *_flags(DENOISE)], "refused to load", "denoise")
    assert not marker.exists()
    assert not (out / COMPLETE).exists() and not (tmp_path / "d" / COMPLETE).exists()


def test_resume_with_a_changed_input_names_it(sim, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(sim, data)
    out = tmp_path / "o"
    assert simcryo(*classify_argv(data / "particles.star", out)) == 0
    before = folder_state(out)
    # other rows (one defocus changed), same particle count
    blocks = read_star(str(data / "particles.star"))
    defocus = list(blocks["particles"]["rlnDefocusU"])
    defocus[3] = str(float(defocus[3]) + 100)
    blocks["particles"].set("rlnDefocusU", defocus)
    write_star(str(data / "other.star"), blocks)
    msg = one_line_error(capsys, classify_argv(data / "other.star", out, "--resume"),
                         "different input than the checkpoint in")
    assert "the STAR rows differ" in msg
    # the same rows, a rewritten stack
    os.utime(data / "particles.mrcs", ns=(1, 1))
    msg = one_line_error(capsys, classify_argv(data / "particles.star", out, "--resume"),
                         "stack particles.mrcs differs")
    assert "STAR rows" not in msg
    assert folder_state(out) == before  # nothing touched
    # denoise: a changed parameter on resume names it
    model = tmp_path / "m"
    assert simcryo("denoise", "train", "--i", data / "other.star", "--o", model,
                     *_flags(DENOISE)) == 0
    one_line_error(capsys, ["denoise", "train", "--i", data / "other.star", "--o", model,
                            "--resume", *_flags(dict(DENOISE, lr=0.5))], "lr ", "denoise")


def test_resume_with_a_missing_artefact_recomputes_it(star, full, interrupted, capsys):
    (interrupted / "features.npy").unlink()
    rc, err, log = run_cli(capsys, classify_argv(star, interrupted, "--resume"))
    assert rc == 0, err
    assert "recomputing from features (changed: features.npy missing or changed)" in log
    same_result(full, interrupted)


def test_every_parameter_has_a_stage():
    fields = set(ClassifyConfig.__dataclass_fields__)
    staged = [p for names in STAGE_PARAMS.values() for p in names]
    assert len(staged) == len(set(staged))
    assert set(staged) | UNCHECKED == fields and not set(staged) & UNCHECKED


# ----------------------------------------------------------------------------- folders
def test_concurrent_run_is_refused(star, full, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    with open(out / LOCK, "w") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another run holds the folder
        holder.write("pid 1 on elsewhere")
        holder.flush()
        one_line_error(capsys, classify_argv(star, out), "another simcryo run (pid 1 on "
                                                         "elsewhere) is writing into")
        one_line_error(capsys, ["align", "--i", full / "particles.star", "--o", out],
                       "another simcryo run", "align")
    assert sorted(os.listdir(out)) == [LOCK]
    assert simcryo(*classify_argv(star, out)) == 0  # released: the folder is free


def test_existing_results_input_folder_and_force(star, full, tmp_path, capsys):
    before = folder_state(full)
    one_line_error(capsys, classify_argv(star, full, seed=1), "already holds results")
    one_line_error(capsys, ["align", "--i", full / "particles.star", "--o", full],
                   "is an input folder", "align")
    assert folder_state(full) == before
    one_line_error(capsys, classify_argv(star, star.parent), "is an input folder")
    one_line_error(capsys, ["denoise", "train", "--i", star, "--o", star.parent,
                            *_flags(DENOISE)], "is an input folder", "denoise")
    copy = tmp_path / "copy"
    shutil.copytree(full, copy)
    assert simcryo(*classify_argv(star, copy, "--force", seed=1)) == 0
    info = json.loads((copy / COMPLETE).read_text())
    assert info["config"]["seed"] == 1


def test_denoise_model_is_written_once_and_marked_complete(star, tmp_path, capsys):
    model = tmp_path / "m"
    assert simcryo("denoise", "train", "--i", star, "--o", model, *_flags(DENOISE)) == 0
    assert {"model.pt", "checkpoint.pt", COMPLETE} <= set(os.listdir(model))
    os.umask(0o022)
    assert oct(os.stat(model / "model.pt").st_mode & 0o777) == "0o644"  # not 0600
    # an unfinished training (its run.json not written) cannot be applied
    (model / COMPLETE).unlink()
    one_line_error(capsys, ["denoise", "apply", "--i", star, "--model", model, "--o",
                            tmp_path / "d"], "did not finish", "denoise")
    assert not (tmp_path / "d").exists()


# ----------------------------------------------------------------------------- inputs
def _star_with(sim, tmp_path, name, **columns):
    """A copy of the simulated STAR in tmp_path (absolute image paths), columns replaced."""
    blocks = read_star(str(sim / "particles.star"))
    blocks["particles"].set("rlnImageName", [n.replace("@", f"@{sim}/")
                                             for n in blocks["particles"]["rlnImageName"]])
    for label, values in columns.items():
        target = blocks["optics"] if label == "rlnImagePixelSize" else blocks["particles"]
        target.set(label, values)
    path = tmp_path / name
    write_star(str(path), blocks)
    return path


def test_malformed_inputs_give_one_line(sim, tmp_path, capsys):
    stack = str(sim / "particles.mrcs")
    binary = tmp_path / "binary.star"
    binary.write_bytes(bytes(range(256)) * 8)
    cases = [
        (binary, "not a STAR file (binary, not text)"),
        (_star_with(sim, tmp_path, "neg.star", rlnImagePixelSize=[-2.0]),
         "the pixel size must be > 0"),
        (_star_with(sim, tmp_path, "zero.star", rlnImagePixelSize=[0.0]),
         "the pixel size must be > 0"),
        (_star_with(sim, tmp_path, "bare.star", rlnImageName=[stack] * 48),
         "has no N@ image index, but"),
    ]
    for path, fragment in cases:
        one_line_error(capsys, classify_argv(path, tmp_path / "o"), fragment)
    one_line_error(capsys, classify_argv(sim / "particles.star", tmp_path / "o", apix=-1),
                   "the pixel size must be > 0")
    # a stack two folders above the STAR, not beside it, is not used
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    shutil.copy(sim / "particles.mrcs", tmp_path / "particles.mrcs")
    shutil.copy(sim / "particles.star", deep / "particles.star")
    one_line_error(capsys, classify_argv(deep / "particles.star", tmp_path / "o"),
                   "image stack not found: particles.mrcs")
    assert not (tmp_path / "o" / COMPLETE).exists()


def test_single_image_stacks_need_no_index(tmp_path):
    from simcryo.io import StarBlock, load_particles
    images = np.random.default_rng(0).standard_normal((4, 32, 32)).astype(np.float32)
    for i in range(4):
        write_stack(str(tmp_path / f"p{i}.mrc"), images[i], 2.0)
    names = [f"p{i}.mrc" for i in (2, 0, 3, 1)]
    write_star(str(tmp_path / "s.star"), {"particles": StarBlock({"rlnImageName": names})})
    pset = load_particles(str(tmp_path / "s.star"))
    assert np.array_equal(pset.images(), images[[2, 0, 3, 1]])


def test_warnings_for_k_near_n_empty_classes_and_negative_defocus(sim, tmp_path, capsys):
    blocks = read_star(str(sim / "particles.star"))
    defocus = [f"-{v}" for v in blocks["particles"]["rlnDefocusU"]]
    path = _star_with(sim, tmp_path, "negdef.star", rlnDefocusU=defocus)
    rc, err, _ = run_cli(capsys, classify_argv(path, tmp_path / "o", K=12))
    assert rc == 0
    text = "\n".join(err)
    assert "negative defocus" in text
    assert "K=12 classes for 48 particles" in text
    sizes = json.loads((tmp_path / "o" / COMPLETE).read_text())["class_sizes"]
    if 0 in sizes:
        assert "came out empty" in text


def test_evaluate_matches_by_image_name_and_checks_the_averages(sim, full, tmp_path, capsys):
    # the same particles in another order, written elsewhere (absolute image paths, where
    # --i has paths relative to its folder)
    shuffled = _star_with(sim, tmp_path, "shuffled.star")
    truth = read_star(str(shuffled))
    order = np.random.default_rng(0).permutation(48)
    truth["particles"] = truth["particles"].take(order)
    write_star(str(shuffled), truth)
    reports = []
    for t in (sim / "particles.star", tmp_path / "shuffled.star"):
        rc, err, _ = run_cli(capsys, ["evaluate", "--i", full / "particles.star", "--truth", t,
                                      "--o", tmp_path / "r.json"])
        assert rc == 0, err
        reports.append(json.loads((tmp_path / "r.json").read_text()))
    assert reports[0]["scores"] == reports[1]["scores"]
    assert reports[0]["pose"] == reports[1]["pose"]
    write_stack(str(tmp_path / "ten.mrcs"), np.ones((10, 32, 32), np.float32), 2.0)
    one_line_error(capsys, ["evaluate", "--i", full / "particles.star", "--averages",
                            tmp_path / "ten.mrcs", "--references", sim / "references.mrcs"],
                   "holds 10 class averages but the run has K=3", "evaluate")
