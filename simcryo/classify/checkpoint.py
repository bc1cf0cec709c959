"""OUT/checkpoint.pt of `simcryo classify`: the pipeline state (stage, epoch, curves,
timings, refinement state) with the model and optimiser state dicts, written after every
epoch / iteration (atomically; loaded with `weights_only=True`).

Resume contract (`--resume`; the Scipion "Continue" relies on it):
- the checkpoint records the input's identity (`ParticleSet.fingerprint`: STAR rows, stack
  sizes and modification times), every parameter (each belongs to the first stage it
  affects, STAGE_PARAMS) and the stage artefacts (features.npy, neighbors.npy, the cache:
  size and modification time);
- a different input is an error naming what differs;
- changed parameters: the stages before the first affected one are reused (their artefacts
  verified; a missing or changed artefact recomputes from the stage that makes it), that
  stage and all later ones are recomputed, and the result equals an uninterrupted run with
  the new parameters (same seed). One line says which: `[classify] resume: reusing
  preprocess, pretext, features; recomputing from scan (changed: K 10 -> 20)`;
- UNCHECKED parameters (where and how fast it runs) never count, nor does the number of
  torchrun ranks: the state holds whole arrays, not shards, so any world size resumes it;
- no checkpoint in the folder: a fresh start.
"""
import dataclasses
import os

from simcryo import distributed, runtime
from simcryo.errors import SimcryoError

CHECKPOINT = "checkpoint.pt"
FORMAT = 2  # 1: before the input fingerprint and the per-stage parameters
STAGES = ("preprocess", "pretext", "features", "scan", "selflabel", "refine", "averages")
# every ClassifyConfig field that changes the result, by the first stage it affects
STAGE_PARAMS = {
    "preprocess": ("apix", "mask_diameter", "working_box", "phase_flip", "equalize", "wiener",
                   "lowpass"),
    "pretext": ("seed", "references", "encoder", "invariant_angular", "invariant_dim",
                "invariant_exact_limit", "invariant_candidates", "pretext_box", "width",
                "feature_dim", "pretext_epochs", "batch_size",
                "lr", "weight_decay", "temperature", "max_shift", "scale_min", "scale_max",
                "contrast", "brightness", "noise", "blur", "mirror"),
    "features": ("tta_rotations", "knn"),
    "scan": ("K", "scan_heads", "scan_epochs", "scan_lr", "entropy_weight"),
    "selflabel": ("selflabel_epochs", "confidence"),
    "refine": ("refine_init", "refine_iterations", "refine_align_iterations",
               "refine_seed_candidates", "refine_ctf", "refine_angles", "refine_shift",
               "refine_temperature", "refine_ctf_epsilon", "refine_min_posterior",
               "refine_search_classes", "refine_first_search_classes",
               "refine_prescreen_box", "refine_mask_scale", "refine_subset",
               "refine_full_iterations"),
    "averages": ("average_iterations", "average_box", "average_filter", "sort_classes"),
}
# parameters that do not change the result (where and how fast it runs, file names; the
# input is checked by its fingerprint, not its name)
UNCHECKED = {"device", "threads", "resume", "force", "i", "o"}
# what each stage leaves in the checkpoint: models, state entries, curves, timings
STAGE_MODELS = {"pretext": ("backbone", "proj_head", "pretext_opt"),
                "scan": ("scan_heads", "scan_opt"), "selflabel": ("label_head", "label_opt")}
STAGE_STATE = {"preprocess": ("geometry",), "pretext": ("pretext_images", "pretext_seconds"),
               "features": (), "scan": ("scan_head_losses", "scan_best_head"),
               "selflabel": (), "refine": ("refine_state", "refine_result", "refine_geometry"),
               "averages": ()}
CURVE_STAGE = {"pretext_loss": "pretext", "scan_loss_best": "scan",
               "selflabel_loss": "selflabel", "selflabel_confident": "selflabel",
               "refine_loglik": "refine", "refine_changed": "refine"}
# the artefact files and the stage that writes them
ARTEFACTS = {"invariants.npy": "pretext", "rotational_neighbors.npy": "pretext",
             "features.npy": "features", "neighbors.npy": "features"}
# pipeline state["stage"] (the next stage to run) -> STAGES; "done": refine finished
PROGRESS = {"pretext": "pretext", "features": "features", "scan": "scan",
            "selflabel": "selflabel", "refine": "refine", "done": "averages"}
MODELS = {m for names in STAGE_MODELS.values() for m in names}


def stage_of(param):
    for stage, names in STAGE_PARAMS.items():
        if param in names:
            return stage
    return None


def file_identity(path):
    st = os.stat(path)
    return [int(st.st_size), int(st.st_mtime_ns)]


def _fmt(v):
    return f"{v:g}" if isinstance(v, float) else str(v)


class Checkpoint:
    def __init__(self, out_dir, cfg, resume, fingerprint=None, log=runtime.log):
        self.out = out_dir
        self.path = os.path.join(out_dir, CHECKPOINT)
        self.cfg, self.resume, self.log = cfg, resume, log
        self.fingerprint = fingerprint
        self.models = {}  # latest state dict of every model: later saves carry them

    def save(self, state, **models):
        """Write `state` and the state dicts of `models` (name -> module / optimiser), with
        those saved earlier (a resumed later stage needs the earlier stages' models). Under
        torchrun rank 0 writes (every rank holds the same state); all ranks load it."""
        if not distributed.is_main():
            return
        for name, obj in models.items():
            self.models[name] = obj.state_dict()
        data = dict(state)
        data.update(self.models)
        data.update(format=FORMAT, config=dataclasses.asdict(self.cfg), input=self.fingerprint)
        runtime.save_checkpoint(self.path, data)

    def record_artefact(self, state, name):
        state.setdefault("artefacts", {})[name] = file_identity(os.path.join(self.out, name))

    # ---------------------------------------------------------------- resume
    def load(self, state):
        """When resuming from a checkpoint of the same job: copies its pipeline entries into
        `state` (reset from the first stage to recompute) and returns the saved models;
        otherwise None (a fresh run)."""
        if not self.resume:
            return None
        if not os.path.exists(self.path):
            self.log(f"[classify] resume: no {CHECKPOINT} in {self.out}; starting fresh")
            return None
        saved = runtime.load_checkpoint(self.path, "cpu")
        if not isinstance(saved, dict) or saved.get("format") != FORMAT:
            raise SimcryoError(f"{self.path} is from another simcryo version; rerun without "
                               "--resume (with --force to replace it)")
        self._check_input(saved.get("input") or {})
        changed = self._changed(saved.get("config") or {})
        first = min((stage_of(k) for k, _, _ in changed), key=STAGES.index,
                    default="averages")
        reasons = [f"{k} {_fmt(a)} -> {_fmt(b)}" for k, a, b in changed]
        bad = self._bad_artefacts(saved)
        if bad:
            first = min([first] + [ARTEFACTS[b] for b in bad], key=STAGES.index)
            reasons += [f"{b} missing or changed" for b in bad]
        state.update({k: v for k, v in saved.items()
                      if k not in MODELS and k not in ("config", "input", "format")})
        self.models = {k: v for k, v in saved.items() if k in MODELS}
        progress = PROGRESS[state["stage"]]
        if STAGES.index(first) <= STAGES.index(progress):
            self.reset(state, first)
            progress = first
        reused = STAGES[:STAGES.index(progress)]
        what = (f"recomputing from {progress}" if reasons or progress == "averages"
                else f"continuing {progress} at epoch {state['epoch']}")
        why = f" (changed: {', '.join(reasons)})" if reasons else ""
        self.log(f"[classify] resume: reusing {', '.join(reused) or 'nothing'}; {what}{why}")
        return dict(self.models)

    def _check_input(self, before):
        now = self.fingerprint or {}
        what = []
        if before.get("n") != now.get("n"):
            what.append(f"{now.get('n')} particles, the checkpoint's input had {before.get('n')}")
        elif before.get("rows") != now.get("rows"):
            what.append("the STAR rows differ")
        if before.get("apix") != now.get("apix"):
            what.append(f"pixel size {now.get('apix')} Å, was {before.get('apix')} Å")
        old, new = before.get("stacks", {}), now.get("stacks", {})
        diff = sorted(set(old) ^ set(new)) + sorted(p for p in set(old) & set(new)
                                                    if list(old[p]) != list(new[p]))
        if diff:
            what.append(f"stack {os.path.basename(diff[0])} differs (other file, size or "
                        f"modification time)" + (f" and {len(diff) - 1} more" if diff[1:] else ""))
        if what:
            raise SimcryoError(f"--resume with a different input than the checkpoint in "
                               f"{self.out}: {'; '.join(what)}")

    def _changed(self, before):
        now = dataclasses.asdict(self.cfg)
        unknown = sorted(k for k in now if k not in UNCHECKED and stage_of(k) is None)
        if unknown:  # a new parameter must be given its stage
            raise RuntimeError(f"classify parameters without a stage: {unknown}")
        return [(k, before.get(k), now[k]) for k in now
                if k not in UNCHECKED and _norm(before.get(k)) != _norm(now[k])]

    def _bad_artefacts(self, saved):
        recorded = saved.get("artefacts") or {}
        bad = []
        for name in ARTEFACTS:  # the cache is not one: removed when done, rebuilt if missing
            p = os.path.join(self.out, name)
            if name in recorded and (not os.path.exists(p)
                                     or file_identity(p) != list(recorded[name])):
                bad.append(name)
        return bad

    def reset(self, state, first):
        """Forget `first` and every later stage: they run again."""
        later = STAGES[STAGES.index(first):]
        for stage in later:
            for m in STAGE_MODELS.get(stage, ()):
                self.models.pop(m, None)
            for k in STAGE_STATE[stage]:
                state.pop(k, None)
            state["timings"].pop(stage, None)
        for name in list(state["curves"]):
            if CURVE_STAGE.get(name) in later:
                state["curves"].pop(name)
        for name, stage in ARTEFACTS.items():
            if stage in later:
                state.get("artefacts", {}).pop(name, None)
        if first in ("preprocess", "pretext"):
            state.update(pretext_images=0, pretext_seconds=0.0)
        stage = first if first in PROGRESS else "pretext"
        state.update(stage="done" if first == "averages" else stage, epoch=0)


def _norm(v):
    # tuples come back from the checkpoint as lists
    return list(v) if isinstance(v, tuple) else v
