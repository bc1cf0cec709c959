"""OUT/checkpoint.pt of `simcryo classify`: the pipeline state (stage, epoch, curves,
timings, refinement state) with the model and optimiser state dicts, written after every
epoch / iteration; a resumed run continues from it and refuses changed parameters."""
import dataclasses
import os

from simcryo import runtime
from simcryo.errors import SimcryoError

CHECKPOINT = "checkpoint.pt"
MODELS = {"backbone", "proj_head", "pretext_opt", "scan_heads", "scan_opt", "label_head",
          "label_opt", "config"}
# parameters that do not change the result (where and how fast it runs, file names)
UNCHECKED = {"device", "threads", "resume", "i", "o"}


class Checkpoint:
    def __init__(self, out_dir, cfg, resume, log=runtime.log):
        self.path = os.path.join(out_dir, CHECKPOINT)
        self.cfg, self.resume, self.log = cfg, resume, log

    def save(self, state, **models):
        """Write `state` and the state dicts of `models` (name -> module / optimiser)."""
        data = dict(state)
        data["config"] = dataclasses.asdict(self.cfg)
        for name, obj in models.items():
            data[name] = obj.state_dict()
        runtime.save_checkpoint(self.path, data)

    def load(self, state):
        """The saved checkpoint when resuming (None otherwise); its pipeline entries are
        copied into `state`."""
        if not (self.resume and os.path.exists(self.path)):
            return None
        saved = runtime.load_checkpoint(self.path, "cpu")
        before = dict(saved.get("config", {}))
        now = dataclasses.asdict(self.cfg)
        diff = sorted(k for k in now if k not in UNCHECKED and before.get(k) != now[k])
        if diff:
            raise SimcryoError("--resume with different parameters than the checkpoint: "
                               + ", ".join(diff))
        state.update({k: v for k, v in saved.items() if k not in MODELS})
        self.log(f"[classify] resuming at stage {state['stage']} epoch {state['epoch']}")
        return saved
