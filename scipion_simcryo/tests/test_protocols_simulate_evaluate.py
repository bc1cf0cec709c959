"""ProtSimcryoSimulate and ProtSimcryoEvaluate in a headless project."""
import json
import os

import mrcfile
import numpy as np
import pytest

from pwem.constants import ALIGN_NONE

from scipion_simcryo import constants as cts
from scipion_simcryo.protocols import ProtSimcryoEvaluate, ProtSimcryoSimulate
from scipion_simcryo.protocols import protocol_simulate as simulate
from scipion_simcryo.tests.common import (SimcryoTestBase, SimcryoUnitTest, addClassesOutput,
                                          engineHas, writeStack, K, PER_CLASS, BOX, N)

pytestmark = pytest.mark.skipif(not engineHas('simulate'),
                                reason='engine command `simcryo simulate` not available')


class TestSimcryoSimulateEvaluate(SimcryoTestBase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.sim = cls.runSimulate()

    def test_simulate_particles_carry_ctf_and_truth(self):
        parts = self.sim.outputParticles
        self.assertSetSize(parts, N)
        self.assertTrue(parts.hasCTF())
        self.assertEqual(parts.getXDim(), BOX)
        self.assertGreater(parts.getSamplingRate(), 0)
        self.assertEqual(parts.getAlignment(), ALIGN_NONE)
        self.assertEqual(parts.getAcquisition().getVoltage(), 300.0)
        labels, defoci = [], []
        for p in parts:
            labels.append(p.getAttributeValue(cts.TRUE_CLASS))
            psi = p.getAttributeValue(cts.TRUE_PSI)
            self.assertTrue(-360.0 <= psi <= 360.0)
            ctf = p.getCTF()
            defoci.append(ctf.getDefocusU())
            self.assertGreaterEqual(ctf.getDefocusU(), ctf.getDefocusV())
        # Default defocus range 1.0-2.5 µm (Scipion form in Å), astigmatism <= 500 Å.
        self.assertTrue(all(9000 <= d <= 26000 for d in defoci), defoci)
        self.assertEqual(sorted(set(labels)), list(range(1, K + 1)))
        self.assertEqual(np.bincount(labels)[1:].tolist(), [PER_CLASS] * K)

    def test_simulate_images_and_references(self):
        parts = self.sim.outputParticles
        first = parts.getFirstItem()
        with mrcfile.mmap(first.getFileName(), permissive=True) as m:
            self.assertEqual(m.data.shape, (N, BOX, BOX))
            self.assertTrue(np.isfinite(m.data).all())
            self.assertGreater(float(m.data.std()), 0)
        refs = self.sim.outputReferences
        self.assertSetSize(refs, K)
        self.assertEqual(refs.getXDim(), BOX)
        self.assertEqual(refs.getSamplingRate(), parts.getSamplingRate())

    def test_simulate_real_noise_from_particles(self):
        """Realistic-noise mode: noise cut from the background of a particle set."""
        apix = self.sim.outputParticles.getSamplingRate()
        prot = self.runSimulate(noiseMode=cts.NOISE_REAL,
                                noiseParticles=self.sim.outputParticles, particlesPerClass=4,
                                noiseMaskDiameterA=int(16 * apix))
        self.assertSetSize(prot.outputParticles, K * 4)
        args = prot._getEngineArgs()
        self.assertIn('--noise real', args)
        # the form's diameter (Å) is the simulation's radius in px of the noise particles
        self.assertIn('--noise-mask-radius %s' % round(int(16 * apix) / 2.0 / apix, 3), args)
        with open(prot._getFileName('out_runlog')) as f:
            self.assertAlmostEqual(json.load(f)['noise']['noise_mask_radius_px'],
                                   int(16 * apix) / 2.0 / apix, places=2)
        with mrcfile.mmap(prot.outputParticles.getFirstItem().getFileName(),
                          permissive=True) as m:
            self.assertTrue(np.isfinite(m.data).all())
            self.assertGreater(float(m.data.std()), 0)

    def test_simulate_realistic_truth_and_junk_fraction(self):
        """Uniform views, junk, per-image contrast and coloured noise: the truth columns
        reach every particle, and the junk share is the one asked for."""
        good, fraction = K * 40, 0.25
        prot = self.runSimulate(views=simulate.VIEWS_UNIFORM, particlesPerClass=40,
                                junkFraction=fraction, contrastSigma=0.3,
                                noiseMode=simulate.NOISE_COLOURED)
        args = prot._getEngineArgs()
        for flag in ('--views uniform', '--noise coloured', '--junk-fraction 0.25',
                     '--junk-kinds empty,blob,offcentre', '--contrast-sigma 0.3',
                     '--noise-corner 40.0'):
            self.assertIn(flag, args)
        parts = prot.outputParticles
        kinds, classes, contrasts = [], [], []
        for p in parts:
            for attr in cts.TRUTH_ATTRS:
                self.assertTrue(p.hasAttribute(attr), attr)
            kinds.append(p.getAttributeValue(cts.TRUE_KIND))
            classes.append(p.getAttributeValue(cts.TRUE_CLASS))
            contrasts.append(p.getAttributeValue(cts.TRUE_CONTRAST))
        kinds, classes = np.array(kinds), np.array(classes)
        self.assertEqual((kinds == 'good').sum(), good)
        self.assertAlmostEqual((kinds != 'good').mean(), fraction, delta=0.02)
        self.assertEqual(set(kinds[kinds != 'good']), {'empty', 'blob', 'offcentre'})
        self.assertTrue((classes[kinds != 'good'] == 0).all())
        self.assertEqual(set(classes[kinds == 'good']), set(range(1, K + 1)))
        self.assertTrue(all(c > 0 for c in contrasts))
        self.assertGreater(float(np.std(contrasts)), 0.1)
        runLog = prot._readRunLog()
        self.assertEqual(runLog['views'], 'uniform')
        self.assertEqual(runLog['noise']['model'], 'coloured')
        self.assertEqual(sum(runLog['kinds'].values()), parts.getSize())
        summary = '\n'.join(prot.summary())
        self.assertIn('uniform orientations', summary)
        self.assertIn('0.25 junk (empty, blob, offcentre)', summary)
        self.assertIn('Particles per kind: good %d' % good, summary)
        self.assertIn('coloured (corner 40 Å, exponent 1) noise', ' '.join(prot.methods()))
        # the viewer shows a few particles of each kind, each panel named by its kind
        from scipion_simcryo.viewers import SimcryoSimulateViewer
        from scipion_simcryo.viewers.viewers import EXAMPLES_PER_KIND
        viewer = SimcryoSimulateViewer(project=self.proj, protocol=prot)
        viewer.setProtocol(prot)
        gallery, = viewer._getVisualizeDict()['displayKinds']()
        titles = [ax.get_title().split('\n')[0] for ax in gallery.getFigure().axes
                  if ax.images]
        self.assertEqual(titles, [k for k in ('good', 'empty', 'blob', 'offcentre')
                                  for _ in range(EXAMPLES_PER_KIND)])
        if engineHas('evaluate'):   # the kinds reach the evaluation: junk cleaning figures
            classes = addClassesOutput(prot, parts,
                                       lambda p: p.getAttributeValue(cts.TRUE_CLASS) + 1,
                                       'truthClasses')
            ev = self._evaluate(classes)
            self.assertIn('cleaning', ev.getReport())

    def test_simulate_other_junk_from_a_volume(self):
        """Junk kind "other": projections of another Scipion volume (its pixel size passed)."""
        volFn = os.path.abspath(self.sim._getExtraPath('output', 'volume.mrc'))
        apix = self.sim.outputParticles.getSamplingRate()
        vol = self.importVolume(volFn, apix).outputVolume
        prot = self.runSimulate(particlesPerClass=8, junkFraction=0.2, junkKinds='other',
                                junkVolume=vol)
        args = prot._getEngineArgs()
        self.assertIn('--junk-volume-apix %s' % apix, args)
        self.assertIn('--junk-volume ', args)
        kinds = [p.getAttributeValue(cts.TRUE_KIND) for p in prot.outputParticles]
        self.assertEqual(kinds.count('other'), prot._readRunLog()['kinds']['other'])
        self.assertEqual(kinds.count('other'), round(0.2 * K * 8 / 0.8))

    def test_non_mrc_volumes_get_one_copy_each(self):
        """A projected and an "other" junk volume in a non-MRC format are converted to two
        MRC files, each holding its own map."""
        from pwem.emlib.image import ImageHandler
        phantom = mrcfile.read(self.sim._getExtraPath('output', 'volume.mrc'))
        apix = self.sim.outputParticles.getSamplingRate()
        maps = {'projected': phantom, 'junk': -phantom[::-1]}
        volumes = {}
        for name, data in maps.items():
            mrcFn = os.path.abspath(self.proj.getTmpPath('%s.mrc' % name))
            writeStack(mrcFn, data, apix)
            spiderFn = mrcFn.replace('.mrc', '.spi')
            ImageHandler().convert(mrcFn, spiderFn)
            volumes[name] = self.importVolume(spiderFn, apix).outputVolume
        prot = self.newProtocol(ProtSimcryoSimulate, volumeSource=simulate.VOLUME,
                                inputVolume=volumes['projected'], junkFraction=0.2,
                                junkKinds='other', junkVolume=volumes['junk'])
        self.proj.saveProtocol(prot)
        args = prot._getEngineArgs().split()
        files = {'projected': args[args.index('--volume') + 1],
                 'junk': args[args.index('--junk-volume') + 1]}
        self.assertNotEqual(files['projected'], files['junk'])
        for name, fn in files.items():
            self.assertTrue(fn.endswith('.mrc'), fn)
            np.testing.assert_allclose(mrcfile.read(fn), maps[name], atol=1e-5,
                                       err_msg=name)

    def test_simulate_realistic_validation(self):
        prot = self.newProtocol(ProtSimcryoSimulate, junkFraction=0.2, junkKinds='empty,ice')
        self.assertTrue(any('Unknown junk kind ice' in e for e in prot.validate()))
        prot = self.newProtocol(ProtSimcryoSimulate, junkFraction=0.2, junkKinds='other')
        self.assertTrue(any('needs the volume' in e for e in prot.validate()))
        prot = self.newProtocol(ProtSimcryoSimulate, junkFraction=0.2, junkKinds=' ')
        self.assertTrue(any('at least one junk kind' in e for e in prot.validate()))
        prot = self.newProtocol(ProtSimcryoSimulate, angularSpread=8.0, minSeparation=15.0)
        self.assertTrue(any('half of the minimum class separation' in e
                            for e in prot.validate()))
        prot = self.newProtocol(ProtSimcryoSimulate, views=simulate.VIEWS_UNIFORM,
                                angularSpread=8.0, minSeparation=15.0, junkFraction=0.2)
        self.assertEqual(prot.validate(), [])

    def test_simulate_validation(self):
        prot = self.newProtocol(ProtSimcryoSimulate, volumeSource=1)
        self.assertTrue(any('volume' in e for e in prot.validate()))
        prot = self.newProtocol(ProtSimcryoSimulate, defocusMin=30000., defocusMax=10000.)
        self.assertTrue(any('Defocus' in e for e in prot.validate()))
        prot = self.newProtocol(ProtSimcryoSimulate, noiseMode=cts.NOISE_REAL)
        self.assertTrue(any('noise' in e for e in prot.validate()))
        parts = self.sim.outputParticles
        boxA = parts.getXDim() * parts.getSamplingRate()
        prot = self.newProtocol(ProtSimcryoSimulate, noiseMode=cts.NOISE_REAL,
                                noiseParticles=parts, noiseMaskDiameterA=int(boxA) + 1)
        self.assertTrue(any('wider than the box of the noise particles' in e
                            for e in prot.validate()), prot.validate())
        prot = self.newProtocol(ProtSimcryoSimulate, noiseMode=cts.NOISE_REAL,
                                noiseParticles=parts, noiseMaskDiameterA=int(boxA))
        self.assertEqual(prot.validate(), [])

    def _evaluate(self, classes, **kwargs):
        prot = self.newProtocol(ProtSimcryoEvaluate, inputClasses=classes, **kwargs)
        return self.launchProtocol(prot)

    def _metric(self, prot, name):
        return dict((label.split()[0], v) for label, v in prot.getMetricsTable())[name]

    @pytest.mark.skipif(not engineHas('evaluate'), reason='`simcryo evaluate` not available')
    def test_evaluate_perfect_and_random(self):
        parts = self.sim.outputParticles
        # Perfect classes whose averages are the true projections themselves.
        perfect = addClassesOutput(self.sim, parts,
                                   lambda p: p.getAttributeValue(cts.TRUE_CLASS),
                                   'truthClasses',
                                   representatives=self.sim._getFileName('out_references'))
        rng = np.random.default_rng(0)
        random = {p.getObjId(): int(rng.integers(1, K + 1)) for p in parts}
        shuffled = addClassesOutput(self.sim, parts, lambda p: random[p.getObjId()],
                                    'randomClasses')
        good = self._evaluate(perfect, trueReferences=self.sim.outputReferences)
        for name in ('ACC', 'NMI', 'ARI', 'FMI'):
            self.assertAlmostEqual(self._metric(good, name), 1.0, places=4)
        bad = self._evaluate(shuffled)
        self.assertLess(self._metric(bad, 'NMI'), 0.3)
        self.assertLess(self._metric(bad, 'ARI'), 0.2)
        self.assertLess(self._metric(bad, 'ACC'), 0.75)
        # Averages identical to the references: FRC = 1 up to Nyquist.
        nyquist = 2 * parts.getSamplingRate()
        self.assertLessEqual(dict(good.getMetricsTable())[
            'median resolution of the averages, FRC 0.5 (Å)'], nyquist * 1.15)  # last FRC shell
        self.assertTrue(any('ACC' in line for line in good.summary()))
        with open(good._getFileName('report')) as f:
            self.assertIsInstance(json.load(f), dict)

    @pytest.mark.skipif(not engineHas('evaluate'), reason='`simcryo evaluate` not available')
    def test_evaluate_two_classifications(self):
        parts = self.sim.outputParticles
        a = addClassesOutput(self.sim, parts, lambda p: p.getAttributeValue(cts.TRUE_CLASS),
                             'classesA')
        # Same partition with other class ids: agreement is perfect.
        b = addClassesOutput(self.sim, parts,
                             lambda p: 10 + K - p.getAttributeValue(cts.TRUE_CLASS),
                             'classesB')
        prot = self._evaluate(a, evaluateAgainst=cts.EVAL_OTHER, otherClasses=b)
        self.assertAlmostEqual(self._metric(prot, 'ACC'), 1.0, places=4)
        self.assertAlmostEqual(self._metric(prot, 'NMI'), 1.0, places=4)

    def test_evaluate_refuses_unlabelled_particles(self):
        imported = self.importParticlesFromSimulation(self.sim)
        classes = addClassesOutput(imported, imported.outputParticles,
                                   lambda p: p.getObjId() % 2 + 1, 'unlabelledClasses')
        prot = self.newProtocol(ProtSimcryoEvaluate, inputClasses=classes)
        self.assertTrue(any(cts.TRUE_CLASS in e for e in prot.validate()))

    @pytest.mark.skipif(not engineHas('evaluate'), reason='`simcryo evaluate` not available')
    def test_viewers_headless(self):
        """Evaluation and simulation viewers build every view without a display."""
        from matplotlib.figure import Figure
        from scipion_simcryo.viewers import (SimcryoEvaluateViewer, SimcryoSimulateViewer,
                                             MetricsTableView)
        classes = addClassesOutput(self.sim, self.sim.outputParticles,
                                   lambda p: p.getAttributeValue(cts.TRUE_CLASS),
                                   'viewerClasses',
                                   representatives=self.sim._getFileName('out_references'))
        ev = self._evaluate(classes, trueReferences=self.sim.outputReferences)
        viewer = SimcryoEvaluateViewer(project=self.proj, protocol=ev)
        viewer.setProtocol(ev)
        actions = viewer._getVisualizeDict()
        # No junk particle: nothing to clean, no cleaning items or rows.
        self.assertNotIn('displayCleaning', actions)
        self.assertFalse(any('recall' in label for label, _ in ev.getMetricsTable()))
        table, = actions['displayTable']()
        self.assertIsInstance(table, MetricsTableView)
        self.assertIn('ACC', table.getText())
        self.assertRegex(table.getText(), r'particles scored +%d(\n|$)' % (K * PER_CLASS))
        self.assertNotIn('[[', ev.getRunName())
        perClass, = actions['displayPerClass']()
        self.assertEqual(len(perClass.rows), K)
        self.assertEqual(perClass.rows[0][2:4], ['1.000', '1.000'])   # precision, recall
        for name in ('displayConfusion', 'displayFrc', 'displayGallery'):
            view, = actions[name]()
            self.assertIsInstance(view.getFigure(), Figure, name)
        confusion = actions['displayConfusion']()[0].getFigure().axes[0]
        self.assertEqual(confusion.get_xlabel(), 'predicted class')
        frc = actions['displayFrc']()[0].getFigure().axes[0]
        self.assertEqual(frc.get_xlabel(), 'spatial frequency (1/Å)')
        self.assertEqual(len(frc.get_lines()), K + 2)   # K curves + the 0.5 / 0.143 lines
        gallery = actions['displayGallery']()[0].getFigure()
        self.assertEqual(len([ax for ax in gallery.axes if ax.images]), 2 * K)

        pv = SimcryoSimulateViewer(project=self.proj, protocol=self.sim)
        pv.setProtocol(self.sim)
        refs, = pv._getVisualizeDict()['displayReferences']()
        panels = [ax for ax in refs.getFigure().axes if ax.images]
        self.assertEqual(len(panels), K)
        self.assertEqual(panels[0].get_title(), 'view 1\n%d particles' % PER_CLASS)


class TestSimulateFormMatchesEngine(SimcryoUnitTest):
    """The choices and unit-converted defaults the form spells out itself."""

    def test_choices_and_defaults(self):
        from simcryo.simulation import realistic
        from simcryo.simulation.simulate import SimulateConfig
        self.assertEqual(simulate.VIEW_MODES, list(realistic.VIEW_MODES))
        self.assertEqual(simulate.JUNK_KINDS, list(realistic.JUNK_KINDS))
        prot = ProtSimcryoSimulate()
        engine = SimulateConfig()
        self.assertEqual(simulate.VIEW_MODES[prot.views.get()], engine.views)
        self.assertEqual(simulate.NOISE_MODELS[prot.noiseMode.get()], engine.noise)
        for name, field in [('defocusMin', 'defocus_min'), ('defocusMax', 'defocus_max'),
                            ('astigmatism', 'astigmatism')]:   # Å in the form, µm engine
            self.assertAlmostEqual(getattr(prot, name).get(), getattr(engine, field) * 1e4)
        for name, field in prot._engineParamFields:
            self.assertEqual(getattr(prot, name).get(), getattr(engine, field), name)


def _selectionFigures(members, kept):
    """(recall, contamination, junk rejected) counted directly from the particles' truth
    kinds: ``members`` {class id: [kind, ...]}, ``kept`` the kept class ids."""
    kinds = [(cid in kept, kind != 'good') for cid, ks in members.items() for kind in ks]
    good = sum(not junk for _, junk in kinds)
    junk = sum(junk for _, junk in kinds)
    keptN = sum(k for k, _ in kinds)
    return (sum(k and not j for k, j in kinds) / good,
            sum(k and j for k, j in kinds) / keptN if keptN else 0.0,
            sum(not k and j for k, j in kinds) / junk)


@pytest.mark.skipif(not all(engineHas(c) for c in ('classify', 'select', 'evaluate')),
                    reason='engine commands classify, select and evaluate needed')
class TestRealisticCleaningWorkflow(SimcryoTestBase):
    """simulate (uniform views, junk, coloured noise, CTF) -> classify -> rank and select ->
    evaluate with the selection and the true volume: the cleaning figures reach the metrics
    table, summary and viewer, and agree with a count from the particles' truth kinds."""

    @classmethod
    def setUpClass(cls):
        from scipion_simcryo.protocols import ProtSimcryoClassify2D, ProtSimcryoSelectClasses
        from scipion_simcryo.tests.common import fastArgs
        super().setUpClass()
        cls.sim = cls.runSimulate(views=simulate.VIEWS_UNIFORM, particlesPerClass=30,
                                  junkFraction=0.2, noiseMode=simulate.NOISE_COLOURED,
                                  snr=0.5)
        cls.cls2d = cls.launchProtocol(cls.newProtocol(
            ProtSimcryoClassify2D, inputParticles=cls.sim.outputParticles, numberOfClasses=6,
            useGpu=False, numberOfThreads=1, seed=1, extraParams=fastArgs('classify')))
        cls.select = cls.launchProtocol(cls.newProtocol(
            ProtSimcryoSelectClasses, inputClasses=cls.cls2d.outputClasses,
            numberOfThreads=1))
        volFn = os.path.abspath(cls.sim._getExtraPath('output', 'volume.mrc'))
        cls.volume = cls.importVolume(
            volFn, cls.sim.outputParticles.getSamplingRate()).outputVolume
        cls.ev = cls.launchProtocol(cls.newProtocol(
            ProtSimcryoEvaluate, inputClasses=cls.cls2d.outputClasses,
            selectedClasses=cls.select.outputClasses, trueVolume=cls.volume,
            numberOfThreads=1))

    def _members(self):
        return {cls.getObjId(): [p.getAttributeValue(cts.TRUE_KIND) for p in cls]
                for cls in self.cls2d.outputClasses.iterItems() if cls.getSize()}

    def test_figures_agree_with_a_direct_count(self):
        members = self._members()
        oracle = {cid for cid, ks in members.items()
                  if np.mean([k != 'good' for k in ks]) < 0.5}
        selected = {cls.getObjId() for cls in self.select.outputClasses.iterItems()}
        table = {label: (o, s) for label, o, s in self.ev.getCleaningTable()}
        for which, kept in ((0, oracle), (1, selected)):
            recall, contamination, rejected = _selectionFigures(members, kept)
            self.assertAlmostEqual(table['good-particle recall (share of good particles '
                                         'kept)'][which], recall, places=6)
            self.assertAlmostEqual(table['contamination (junk share of kept)'][which],
                                   contamination, places=6)
            self.assertAlmostEqual(table['junk rejected (share of junk not kept)'][which],
                                   rejected, places=6)
            self.assertEqual(table['classes kept'][which], len(kept))

    def test_figures_in_range_and_in_table_summary_viewer(self):
        rows = dict(self.ev.getMetricsTable())
        for sel in ('oracle selection', 'given selection'):
            for figure in ('good-particle recall (share of good particles kept)',
                           'contamination (junk share of kept)',
                           'junk rejected (share of junk not kept)',
                           'class-average fidelity of the kept, size-weighted (0 noise, '
                           '1 clean)'):
                value = rows['%s, %s' % (figure, sel)]
                self.assertTrue(0.0 <= value <= 1.0, (figure, sel, value))
            spread = rows['median view spread in a kept class (deg), %s' % sel]
            floor = rows['view spread floor, spherical k-means (deg), %s' % sel]
            self.assertTrue(0.0 <= floor <= 180.0 and 0.0 <= spread <= 180.0)
        args = self.ev._getEngineArgs()
        self.assertIn('--selection ', args)
        self.assertIn('--volume ', args)
        summary = '\n'.join(self.ev.summary())
        self.assertIn('contamination (junk share of kept), oracle selection', summary)
        self.assertIn('Selection scored beside it', summary)
        self.assertIn('Fidelity against', summary)
        self.assertIn('good-particle recall', ' '.join(self.ev.methods()))
        from scipion_simcryo.viewers import SimcryoEvaluateViewer
        viewer = SimcryoEvaluateViewer(project=self.proj, protocol=self.ev)
        viewer.setProtocol(self.ev)
        actions = viewer._getVisualizeDict()
        table, = actions['displayCleaning']()
        self.assertIn('contamination (junk share of kept)', table.getText())
        self.assertIn('selection: %s.outputClasses' % self.select.getRunName(), table.title)
        perClass, = actions['displayCleaningClasses']()
        self.assertEqual(len(perClass.rows), len(self._members()))
        self.assertEqual(sum(int(r[1]) for r in perClass.rows),
                         self.sim.outputParticles.getSize())

    def test_select_uses_the_classes_poses(self):
        """Classes with 2D alignment (and CTF): select scores member consistency too."""
        self.assertEqual(self.select._readRunLog()['consistency'], 'used')
        for cls in self.select.outputClasses.iterItems():
            self.assertTrue(cls.hasAttribute('_simcryoConsistency'))
        self.assertIn('consistency of its particles', ' '.join(self.select.methods()))
        with open(self.select._getFileName('input_star')) as fh:
            header = fh.read(4000)
        self.assertIn('_rlnAnglePsi', header)
        self.assertIn('_rlnDefocusU', header)

    def test_selection_must_be_a_subset(self):
        other = addClassesOutput(self.sim, self.sim.outputParticles,
                                 lambda p: p.getObjId() % 2 + 1, 'otherClasses')
        prot = self.newProtocol(ProtSimcryoEvaluate, inputClasses=self.cls2d.outputClasses,
                                selectedClasses=other)
        self.assertTrue(any('not a class of the scored classification' in e
                            for e in prot.validate()), prot.validate())
