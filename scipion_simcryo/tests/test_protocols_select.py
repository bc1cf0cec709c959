"""ProtSimcryoSelectClasses in a headless project: simulated particles with junk, classes made
from the simulated truth (each junk kind its own class, as a classifier would ideally group
them; averages computed here), then the selection."""
import os

import mrcfile
import numpy as np
import pytest

from scipion_simcryo import constants as cts
from scipion_simcryo import convert
from scipion_simcryo.protocols import ProtSimcryoSelectClasses
from scipion_simcryo.protocols.protocol_select import RANK_ATTR, SCORE_ATTR
from scipion_simcryo.tests.common import (SimcryoTestBase, SimcryoUnitTest, addClassesOutput,
                                          engineHas, K)

pytestmark = pytest.mark.skipif(not (engineHas('simulate') and engineHas('select')),
                                reason='engine commands `simulate` and `select` needed')

PER_CLASS = 60          # 3 x 60 good particles
JUNK_FRACTION = 0.25    # + 60 junk: 240 particles
JUNK_KINDS = ['empty', 'blob', 'offcentre']


def truthClassOf(part):
    """True view class 1..K for good particles, K + 1 + kind index for junk."""
    kind = part.getAttributeValue(cts.TRUE_KIND)
    if kind == 'good':
        return part.getAttributeValue(cts.TRUE_CLASS)
    return K + 1 + JUNK_KINDS.index(kind)


def writeClassMeans(parts, labelOf, stackFile):
    """Stack whose image k is the plain mean of the particles of class k (1-based)."""
    stackFn = parts.getFirstItem().getFileName()
    with mrcfile.mmap(stackFn, permissive=True) as m:
        data = np.asarray(m.data, dtype=np.float32)
    labels = {}
    for p in parts:
        labels.setdefault(labelOf(p), []).append(p.getIndex() - 1)
    means = np.stack([data[labels[k]].mean(0) for k in range(1, max(labels) + 1)])
    with mrcfile.new(stackFile, overwrite=True) as m:
        m.set_data(means.astype(np.float32))
        m.voxel_size = parts.getSamplingRate()
    return stackFile


class TestSimcryoSelectClasses(SimcryoTestBase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.sim = cls.runSimulate(particlesPerClass=PER_CLASS, junkFraction=JUNK_FRACTION,
                                  junkKinds=','.join(JUNK_KINDS), snr=0.5)
        parts = cls.sim.outputParticles
        means = writeClassMeans(parts, truthClassOf,
                                os.path.abspath(cls.proj.getTmpPath('truth_means.mrcs')))
        cls.classes = addClassesOutput(cls.sim, parts, truthClassOf, 'truthClasses',
                                       representatives=means)
        cls.select = cls.launchProtocol(cls.newProtocol(
            ProtSimcryoSelectClasses, inputClasses=cls.classes, numberOfThreads=1))

    def _engineSelectedIds(self, prot):
        idOf = {k: cid for cid, k in prot.classNumbers().items()}
        return sorted(idOf[k] for k in prot.getClassScores().selected())

    def test_outputs_follow_the_engine_selection(self):
        prot = self.select
        runLog = prot._readRunLog()
        self.assertEqual(runLog['n_classes'], K + len(JUNK_KINDS))
        selectedIds = self._engineSelectedIds(prot)
        self.assertEqual(len(selectedIds), len(runLog['selected_classes']))
        outClasses = prot.outputClasses
        self.assertEqual(sorted(c.getObjId() for c in outClasses), selectedIds)

        # every output particle belongs to a selected input class, and they are the
        # engine's particles.star
        members = {cid: {p.getObjId() for p in self.classes[cid]} for cid in selectedIds}
        allowed = set().union(*members.values())
        outIds = [p.getObjId() for p in prot.outputParticles]
        self.assertEqual(len(outIds), runLog['particles_selected'])
        self.assertTrue(set(outIds) <= allowed)
        self.assertEqual(set(outIds), allowed)
        engineIds = set(convert.EngineResult(prot._getFileName('out_particles')).ids.tolist())
        self.assertEqual(set(outIds), engineIds)
        for cls in outClasses:
            self.assertEqual({p.getObjId() for p in cls}, members[cls.getObjId()])
            self.assertEqual(cls.getRepresentative().getLocation(),
                             self.classes[cls.getObjId()].getRepresentative().getLocation())

        # the score, rank and features are extras of every output class, equal to the
        # engine's, and at least the threshold
        scores = prot.getClassScores()
        numbers = prot.classNumbers()
        for cls in outClasses:
            row = scores.row(numbers[cls.getObjId()])
            self.assertAlmostEqual(cls.getAttributeValue(SCORE_ATTR),
                                   float(row['simcryoClassScore']), places=5)
            self.assertGreaterEqual(cls.getAttributeValue(SCORE_ATTR), prot.threshold.get())
            self.assertEqual(cls.getAttributeValue(RANK_ATTR), int(row['simcryoClassRank']))
            for label in convert.CLASS_SCORE_LABELS:   # consistency only with poses
                self.assertEqual(cls.hasAttribute('_' + label), label in row, label)
        # these truth classes carry no 2D alignment: no member consistency, and it is said
        self.assertIn('no poses', runLog['consistency'])
        self.assertTrue(any('consistency not used' in line for line in prot.summary()))
        # the particles keep their truth extras (realistic simulation columns included)
        first = prot.outputParticles.getFirstItem()
        for attr in (cts.TRUE_CLASS, cts.TRUE_KIND, cts.TRUE_CONTRAST):
            self.assertTrue(first.hasAttribute(attr), attr)

    def test_good_views_kept_and_empty_boxes_rejected(self):
        """Classes of pure junk or pure views at SNR 0.5: the point of the selection."""
        selected = set(self._engineSelectedIds(self.select))
        self.assertTrue(set(range(1, K + 1)) <= selected, selected)
        self.assertNotIn(K + 1 + JUNK_KINDS.index('empty'), selected)
        summary = '\n'.join(self.select.summary())
        self.assertIn('Selected %d of %d classes' % (len(selected), K + len(JUNK_KINDS)),
                      summary)
        self.assertIn('Mask used:', summary)
        self.assertIn('0.8 x the box of the averages', summary)
        methods = ' '.join(self.select.methods())
        self.assertIn('%d of %d classes scoring at least %g'
                      % (len(selected), K + len(JUNK_KINDS), self.select.threshold.get()),
                      methods)

    def _selectWith(self, threshold):
        prot = self.launchProtocol(self.newProtocol(
            ProtSimcryoSelectClasses, inputClasses=self.classes, threshold=threshold))
        self.assertIn('--threshold %s' % threshold, prot._getEngineArgs())
        return prot

    def test_threshold_moves_the_selection(self):
        default = self.select.threshold.get()   # the form's default
        scores = [float(r['simcryoClassScore']) for r in self.select.getClassScores().rows]
        kept = [v for v in scores if v >= default]
        rejected = [v for v in scores if v < default]
        self.assertTrue(kept and rejected, scores)
        # just below the best rejected score (class_scores.star rounds to 5 decimals): more
        prot = self._selectWith(round(max(rejected) - 1e-4, 5))
        self.assertEqual(prot.outputClasses.getSize(),
                         sum(v >= max(rejected) for v in scores))
        self.assertGreater(prot.outputClasses.getSize(), len(kept))
        # Continue with the default threshold: the engine re-runs, the outputs follow
        from pyworkflow.protocol.constants import MODE_RESUME
        prot.threshold.set(default)
        prot.runMode.set(MODE_RESUME)
        self.launchProtocol(prot)
        prot = self.proj.getProtocol(prot.getObjId())
        self.assertTrue(prot.isFinished())
        self.assertEqual(prot._readRunLog()['config']['threshold'], default)
        self.assertEqual(prot.outputClasses.getSize(), len(kept))
        self.assertEqual(prot.outputParticles.getSize(),
                         self.select.outputParticles.getSize())
        # above every score: no class, no output, and the summary says why
        if max(scores) < 1.0:
            threshold = 1.0
        else:   # scores saturate at 1: nothing is above; keep only the classes at 1
            threshold = round((1.0 + max(v for v in scores if v < 1.0)) / 2, 5)
        prot = self._selectWith(threshold)
        expected = sum(v >= threshold for v in scores)
        if expected:
            self.assertEqual(prot.outputClasses.getSize(), expected)
        else:
            self.assertFalse(prot.hasAttribute('outputClasses'))
            self.assertIn('No class reached the threshold', '\n'.join(prot.summary()))

    def test_validation(self):
        prot = self.newProtocol(ProtSimcryoSelectClasses, inputClasses=self.classes)
        self.assertEqual(prot.validate(), [])
        self.assertNotIn('--mask-diameter', prot._getEngineArgs())
        boxA = self.sim.outputParticles.getXDim() * self.sim.outputParticles.getSamplingRate()
        prot = self.newProtocol(ProtSimcryoSelectClasses, inputClasses=self.classes,
                                maskDiameterA=int(boxA) + 1)
        self.assertTrue(any('wider than the box' in e for e in prot.validate()))
        prot = self.newProtocol(ProtSimcryoSelectClasses, inputClasses=self.classes,
                                maskDiameterA=int(boxA) // 2)
        self.assertIn('--mask-diameter %d' % (int(boxA) // 2), prot._getEngineArgs())
        noAverages = addClassesOutput(self.sim, self.sim.outputParticles, truthClassOf,
                                      'classesWithoutAverages')
        prot = self.newProtocol(ProtSimcryoSelectClasses, inputClasses=noAverages)
        self.assertTrue(any('representative' in e for e in prot.validate()), prot.validate())

    def test_viewer_headless(self):
        from matplotlib.figure import Figure
        from scipion_simcryo.viewers import MetricsTableView, SimcryoSelectViewer
        from scipion_simcryo.viewers.viewers import rankedClasses
        viewer = SimcryoSelectViewer(project=self.proj, protocol=self.select)
        viewer.setProtocol(self.select)
        actions = viewer._getVisualizeDict()
        rows = rankedClasses(self.select)
        self.assertEqual(len(rows), K + len(JUNK_KINDS))
        self.assertEqual([r['rank'] for r in rows], list(range(1, len(rows) + 1)))
        self.assertEqual(sum(r['particles'] for r in rows),
                         self.sim.outputParticles.getSize())
        for r in rows:
            self.assertEqual(r['particles'], self.classes[r['classId']].getSize())
        gallery, = actions['displayRanked']()
        panels = [ax for ax in gallery.getFigure().axes if ax.images]
        self.assertEqual(len(panels), len(rows))
        self.assertEqual(panels[0].get_title().splitlines()[0],
                         '#1 class %d' % rows[0]['classId'])
        kept = sum(r['kept'] for r in rows)
        self.assertEqual(sum('kept' in ax.get_title() for ax in panels), kept)
        self.assertEqual(sum('rejected' in ax.get_title() for ax in panels),
                         len(rows) - kept)
        bars, = actions['displayScores']()
        self.assertIsInstance(bars.getFigure(), Figure)
        self.assertEqual(len(bars.getFigure().axes[0].patches), len(rows))
        table, = actions['displayTable']()
        self.assertIsInstance(table, MetricsTableView)
        self.assertEqual(len(table.rows), len(rows))
        self.assertEqual([row[-1] for row in table.rows],
                         ['kept' if r['kept'] else 'rejected' for r in rows])


class TestSelectFormMatchesEngine(SimcryoUnitTest):

    def test_threshold_default_is_the_engines(self):
        from simcryo.commands.select import SelectConfig
        prot = ProtSimcryoSelectClasses()
        self.assertEqual(prot.threshold.get(), SelectConfig().threshold)
        self.assertIn(('threshold', 'threshold'), prot._engineParamFields)
