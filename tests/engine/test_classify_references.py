"""simcryo classify --references: the EM starts from the classes of given averages."""
import json
import os

import numpy as np
import pytest

from simcryo.classify.config import ClassifyConfig
from simcryo.commands.classify import run
from simcryo.commands.simulate import run as simulate
from simcryo.errors import SimcryoError
from simcryo.io import read_star
from simcryo.io.mrc import open_stack, write_stack
from simcryo.simulation.simulate import SimulateConfig

SMALL = dict(working_box=16, refine_iterations=2, refine_align_iterations=1, refine_angles=12,
             average_iterations=1, threads=1)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    cfg = SimulateConfig(o=str(out), box=32, classes=3, per_class=16, snr=2.0, batch=64, seed=4,
                         shift_sigma=0.5)   # within the search range of the small box
    cfg.validate()
    simulate(cfg)
    return out


def _cfg(sim, out, **kw):
    values = dict(SMALL, i=str(sim / "particles.star"), o=str(out))
    values.update(kw)
    return ClassifyConfig(**values).validate()


def test_true_projections_as_references_give_their_classes(sim, tmp_path):
    refs = str(sim / "references.mrcs")
    assert len(open_stack(refs)) == 3
    # K comes from the references (the 5 given is overridden); no sorting: class k is
    # reference k
    result = run(_cfg(sim, tmp_path / "c", references=refs, K=5, sort_classes=False))
    parts = read_star(str(tmp_path / "c" / "particles.star"))["particles"]
    truth = parts.as_int("simcryoTrueClass")
    assert result["probabilities"].shape[1] == 3
    assert (parts.as_int("rlnClassNumber") == truth).mean() >= 0.95
    assert not os.path.exists(tmp_path / "c" / "features.npy")   # no contrastive stages
    log = json.load(open(tmp_path / "c" / "run.json"))
    assert "initial references" in log["classes_from"]
    assert log["config"]["K"] == 3 and "neighbor_purity@10" not in log["metrics"]
    # the references' order is what changes the classes' numbers
    write_stack(str(tmp_path / "rev.mrcs"), np.array(open_stack(refs))[::-1].copy(), 3.0)
    run(_cfg(sim, tmp_path / "r", references=str(tmp_path / "rev.mrcs"), sort_classes=False,
             apix=0.0))
    rev = read_star(str(tmp_path / "r" / "particles.star"))["particles"]
    assert (rev.as_int("rlnClassNumber") == 4 - truth).mean() >= 0.95


def test_resume_with_new_refinement_parameters_keeps_the_references(sim, tmp_path):
    refs = str(sim / "references.mrcs")
    first = run(_cfg(sim, tmp_path / "c", references=refs, sort_classes=False))
    again = run(_cfg(sim, tmp_path / "c", references=refs, sort_classes=False, resume=True,
                     refine_iterations=3))
    fresh = run(_cfg(sim, tmp_path / "f", references=refs, sort_classes=False,
                     refine_iterations=3))
    assert (again["labels"] == fresh["labels"]).all()
    assert (first["labels"] == fresh["labels"]).mean() >= 0.95


def test_bad_references_stop_with_one_clear_error(sim, tmp_path):
    bad_box = str(tmp_path / "box.mrcs")
    write_stack(bad_box, np.random.default_rng(0).normal(size=(3, 24, 24)).astype(np.float32))
    with pytest.raises(SimcryoError, match="--references .*24 x 24 px.*32 px"):
        run(_cfg(sim, tmp_path / "a", references=bad_box))
    other_apix = str(tmp_path / "apix.mrcs")
    write_stack(other_apix, np.array(open_stack(str(sim / "references.mrcs"))), 2.0)
    with pytest.raises(SimcryoError, match="pixel size 2 Å/px, the particles' is 3 Å/px"):
        run(_cfg(sim, tmp_path / "e", references=other_apix))
    flat = str(tmp_path / "flat.mrcs")
    write_stack(flat, np.zeros((3, 32, 32), np.float32), 3.0)
    with pytest.raises(SimcryoError, match="reference 1 is constant"):
        run(_cfg(sim, tmp_path / "b", references=flat))
    with pytest.raises(SimcryoError, match="not found"):
        run(_cfg(sim, tmp_path / "d", references=str(tmp_path / "missing.mrcs")))
