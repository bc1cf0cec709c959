"""ProtSimcryoClassify2D in a headless project, and the workflow
import -> denoise -> classify -> align/average -> evaluate."""
import os

import mrcfile
import pytest

from pwem.constants import ALIGN_2D

from simcryo.io import load_particles, read_star

from scipion_simcryo import constants as cts
from scipion_simcryo import convert
from scipion_simcryo.protocols import (ProtSimcryoClassify2D, ProtSimcryoDenoise,
                                       ProtSimcryoAlignAverage, ProtSimcryoEvaluate)
from scipion_simcryo.tests.common import (SimcryoTestBase, addClassesOutput, engineHas,
                                          fastArgs, K, BOX, N)

pytestmark = pytest.mark.skipif(
    not (engineHas('simulate') and engineHas('classify')),
    reason='engine commands `simcryo simulate` and `simcryo classify` not available')


def classify(cls, particles, **kwargs):
    values = dict(inputParticles=particles, numberOfClasses=K, useGpu=False,
                  numberOfThreads=2, extraParams=fastArgs('classify'))
    values.update(kwargs)
    return cls.launchProtocol(cls.newProtocol(ProtSimcryoClassify2D, **values))


class TestSimcryoClassify2D(SimcryoTestBase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.sim = cls.runSimulate(snr=2.0)
        cls.prot = classify(cls, cls.sim.outputParticles)

    def test_classes_and_representatives(self):
        classes = self.prot.outputClasses
        apix = self.sim.outputParticles.getSamplingRate()
        self.assertEqual(sum(c.getSize() for c in classes), N)
        self.assertLessEqual(classes.getSize(), K)
        with mrcfile.open(self.prot._getFileName('out_averages')) as m:
            averages = m.data.copy()
        self.assertEqual(averages.shape[1:], (BOX, BOX))
        self.assertEqual(averages.shape[0], K)
        for cls in classes:
            self.assertEqual(cls.getAlignment(), ALIGN_2D)
            rep = cls.getRepresentative()
            self.assertEqual(rep.getIndex(), cls.getObjId())
            self.assertEqual(rep.getSamplingRate(), apix)
            self.assertEqual(rep.getXDim(), BOX)
            self.assertGreater(float(averages[cls.getObjId() - 1].std()), 0)
            meanProb = cls.getAttributeValue(cts.CLASS_MEAN_PROB)
            self.assertTrue(0.0 <= meanProb <= 1.0)

    def test_particles_match_engine_output(self):
        """Same assignments, probabilities and poses as the engine's particles.star."""
        apix = self.sim.outputParticles.getSamplingRate()
        result = convert.EngineResult(self.prot._getFileName('out_particles'), apix=apix)
        self.assertEqual(result.n, N)
        self.assertEqual(list(result.ids), [p.getObjId() for p in self.sim.outputParticles])
        parts = self.prot.outputParticles
        self.assertSetSize(parts, N)
        self.assertEqual(parts.getAlignment(), ALIGN_2D)
        self.assertTrue(parts.hasCTF())
        for p in parts:
            r = result.rowOf(p.getObjId())
            self.assertEqual(p.getClassId(), result.classes[r])
            prob = p.getAttributeValue(cts.CLASS_PROB)
            self.assertTrue(0.0 <= prob <= 1.0)
            self.assertAlmostEqual(prob, result.prob[r], places=5)
            psi, sx, sy, _ = convert.poseFromMatrix(p.getTransform().getMatrix())
            self.assertAlmostEqual((psi - result.psi[r] + 180) % 360 - 180, 0.0, places=3)
            self.assertAlmostEqual(sx * apix, result.ox[r], places=3)
            # The truth extras of the input survive classification.
            self.assertIsNotNone(p.getAttributeValue(cts.TRUE_CLASS))
        for cls in self.prot.outputClasses:
            for p in cls:
                self.assertEqual(p.getClassId(), cls.getObjId())

    def test_checkpoint_and_summary(self):
        self.assertTrue(self.prot._hasCheckpoint())
        summary = '\n'.join(self.prot.summary())
        self.assertIn('non-empty classes', summary)
        # the mask the engine used (run.json), here estimated from the particles
        runLog = self.prot._readRunLog()
        apix = self.sim.outputParticles.getSamplingRate()
        self.assertAlmostEqual(runLog['mask_diameter_A'], 2 * runLog['mask_radius_px'] * apix,
                               places=2)
        self.assertIn('Mask used: %.0f Å diameter (%.1f px radius, estimated from the '
                      'particles).' % (runLog['mask_diameter_A'], runLog['mask_radius_px']),
                      summary)
        methods = ' '.join(self.prot.methods())
        self.assertIn('outside a circular mask of %.0f Å diameter'
                      % runLog['mask_diameter_A'], methods)

    def test_validation(self):
        prot = self.newProtocol(ProtSimcryoClassify2D, inputParticles=self.sim.outputParticles,
                                numberOfClasses=N + 1)
        self.assertTrue(any('K must not exceed' in e for e in prot.validate()))
        apix = self.sim.outputParticles.getSamplingRate()
        boxA = BOX * apix
        prot = self.newProtocol(ProtSimcryoClassify2D, inputParticles=self.sim.outputParticles,
                                numberOfClasses=K, maskDiameterA=int(boxA) + 1)
        self.assertTrue(any('Mask diameter %d Å is wider than the box' % (int(boxA) + 1) in e
                            for e in prot.validate()), prot.validate())
        prot = self.newProtocol(ProtSimcryoClassify2D, inputParticles=self.sim.outputParticles,
                                numberOfClasses=K, maskDiameterA=int(boxA))
        self.assertEqual(prot.validate(), [])
        self.assertTrue(any('wider than 0.9 x the box' in w for w in prot.warnings()))
        self.assertIn('--mask-diameter %d' % int(boxA), prot._getEngineArgs())
        prot = self.newProtocol(ProtSimcryoClassify2D, inputParticles=self.sim.outputParticles,
                                numberOfClasses=K)
        self.assertEqual(prot.validate(), [])
        self.assertTrue(any('20 particles per class' in w for w in prot.warnings()))
        args = prot._getEngineArgs()
        self.assertIn('--phase-flip', args)
        self.assertNotIn('--mask-', args)  # 0: the engine estimates it
        self.assertIn('--device cpu', args.replace("'", '')) if not prot._useGpu() else None

    def test_wizards(self):
        from pwem.wizards.wizard import ParticleMaskRadiusWizard
        from pwem.constants import UNIT_ANGSTROM
        from scipion_simcryo.wizards import (SimcryoMaskDiameterWizard, engineMaskDiameter,
                                             suggestedNumberOfClasses)
        from scipion_simcryo.protocols import (ProtSimcryoAlignAverage, ProtSimcryoDenoise,
                                               ProtSimcryoSimulate)
        apix = self.sim.outputParticles.getSamplingRate()
        prot = self.newProtocol(ProtSimcryoClassify2D, inputParticles=self.sim.outputParticles,
                                maskDiameterA=66)
        wiz = SimcryoMaskDiameterWizard()
        self.assertIsInstance(wiz, ParticleMaskRadiusWizard)
        self.assertEqual(wiz._unit, UNIT_ANGSTROM)
        p = wiz._getParameters(prot)
        self.assertEqual((p['label'], p['value']), ('maskDiameterA', 66))
        self.assertEqual(p['input'].get().getSize(), N)
        self.assertIsNotNone(wiz._getProvider(prot))

        class Form:  # the preview dialog returns a radius in Å; the form gets the diameter
            def setVar(self, label, value):
                self.values = (label, value)
        form = Form()
        wiz.setVar(form, 'maskDiameterA', 33.4)
        self.assertEqual(form.values, ('maskDiameterA', 67))
        # The wizard starts where the engine's automatic estimate is (run.json of the run with
        # --mask-diameter 0 on the same particles).
        self.assertAlmostEqual(engineMaskDiameter(prot),
                               self.prot._readRunLog()['mask_diameter_A'], places=3)
        ali = self.newProtocol(ProtSimcryoAlignAverage, inputClasses=self.prot.outputClasses)
        self.assertLess(engineMaskDiameter(ali), BOX * apix)
        self.assertGreater(engineMaskDiameter(ali), engineMaskDiameter(prot))  # 1.1 x radius
        self.assertEqual(wiz._getParameters(ali)['label'], 'maskDiameterA')
        den = self.newProtocol(ProtSimcryoDenoise, inputParticles=self.sim.outputParticles)
        self.assertEqual(wiz._getParameters(den)['value'], 0)
        sim = self.newProtocol(ProtSimcryoSimulate, noiseParticles=self.sim.outputParticles)
        self.assertEqual(wiz._getParameters(sim)['label'], 'noiseMaskDiameterA')
        self.assertAlmostEqual(engineMaskDiameter(sim), 0.8 * BOX * apix)
        self.assertAlmostEqual(engineMaskDiameter(den), 0.8 * BOX * apix)
        self.assertEqual(suggestedNumberOfClasses(10000), 100)
        self.assertEqual(suggestedNumberOfClasses(360), 7)   # 6 views: not 2
        self.assertEqual(suggestedNumberOfClasses(30), 2)

    def test_classes_viewer_views(self):
        """The viewers build their views without a display (no Tk window, Agg figures)."""
        from matplotlib.figure import Figure
        from pwem.viewers import ClassesView
        from scipion_simcryo.viewers import SimcryoClassesViewer, MetricsTableView
        assert 'DISPLAY' not in __import__('os').environ
        viewer = SimcryoClassesViewer(project=self.proj, protocol=self.prot)
        viewer.setProtocol(self.prot)
        actions = viewer._getVisualizeDict()
        self.assertEqual(set(actions), {'displayGallery', 'displayClasses', 'displayCurves',
                                        'displayMetrics'})
        gallery, = actions['displayGallery']()
        fig = gallery.getFigure()
        self.assertIsInstance(fig, Figure)
        panels = [ax for ax in fig.axes if ax.images]
        self.assertEqual(len(panels), self.prot.outputClasses.getSize())
        # Largest class first, titles carry size and probability.
        sizes = [int(ax.get_title().split('\n')[1].split()[0]) for ax in panels]
        self.assertEqual(sizes, sorted(sizes, reverse=True))
        self.assertIn('p=', panels[0].get_title())
        # By quality score: the engine numbers classes best first, so ids come in order.
        from scipion_simcryo.viewers.viewers import SORT_SCORE
        viewer.gallerySort.set(SORT_SCORE)
        gallery, = actions['displayGallery']()
        panels = [ax for ax in gallery.getFigure().axes if ax.images]
        titles = [ax.get_title() for ax in panels]
        scores = [float(t.split('score ')[1]) for t in titles]
        self.assertEqual(scores, sorted(scores, reverse=True))
        ids = [int(t.split('\n')[0].split()[1]) for t in titles]
        self.assertEqual(ids, sorted(ids))
        classesView, = actions['displayClasses']()
        from scipion_simcryo.viewers.viewers import hasXmippViewer
        if hasXmippViewer():
            self.assertIsInstance(classesView, ClassesView)
        else:   # pwem's Qt metadata viewer, not showj (which needs Xmipp)
            from pwem.viewers.mdviewer.viewer import MDView
            self.assertIsInstance(classesView, MDView)
        curves, = actions['displayCurves']()
        axes = curves.getFigure().axes
        self.assertIn('EM refinement', [ax.get_title() for ax in axes])
        for ax in axes:   # every panel labelled, refinement in iterations
            self.assertTrue(ax.get_ylabel())
            self.assertEqual(ax.get_xlabel(),
                             'iteration' if ax.get_title() == 'EM refinement' else 'epoch')
        metrics = actions['displayMetrics']()
        self.assertIsInstance(metrics[0], MetricsTableView)
        text = metrics[0].getText()
        self.assertIn('ACC (Hungarian matching)', text)
        self.assertRegex(text, r'particles scored +%d(\n|$)' % N)   # a count, not 36.0000
        trueViews = metrics[-1]
        self.assertEqual(trueViews.header[2], 'most frequent true view')


@pytest.mark.skipif(not (engineHas('denoise') and engineHas('align')
                         and engineHas('evaluate')),
                    reason='workflow needs simcryo denoise, align and evaluate')
class TestSimcryoWorkflow(SimcryoTestBase):
    """import -> denoise -> classify -> align/average -> evaluate, in one project."""

    def test_workflow(self):
        sim = self.runSimulate(snr=2.0)
        imported = self.importParticlesFromSimulation(sim).outputParticles
        self.assertSetSize(imported, N)
        self.assertFalse(imported.getFirstItem().hasAttribute(cts.TRUE_CLASS))

        den = self.launchProtocol(self.newProtocol(
            ProtSimcryoDenoise, inputParticles=imported, useGpu=False, numberOfThreads=2,
            extraParams=fastArgs('denoise')))
        self.assertSetSize(den.outputParticles, N)

        cls2d = classify(self, den.outputParticles)
        self.assertEqual(sum(c.getSize() for c in cls2d.outputClasses), N)

        ali = self.launchProtocol(self.newProtocol(
            ProtSimcryoAlignAverage, inputClasses=cls2d.outputClasses, useGpu=False,
            numberOfThreads=2, extraParams=fastArgs('align')))
        self.assertEqual(sum(c.getSize() for c in ali.outputClasses), N)
        self.assertTrue(all(p.hasTransform() for p in ali.outputParticles))

        # Imported particles carry no truth: it comes from the simulation, matched by id.
        ev = self.launchProtocol(self.newProtocol(
            ProtSimcryoEvaluate, inputClasses=ali.outputClasses,
            truthParticles=sim.outputParticles, trueReferences=sim.outputReferences))
        rows = dict(ev.getMetricsTable())
        self.assertEqual(rows['particles scored'], N)
        for name in ('ACC (Hungarian matching)', 'NMI', 'ARI', 'FMI'):
            self.assertTrue(0.0 <= rows[name] <= 1.0 or name == 'ARI', (name, rows[name]))
        # With K true classes, ACC can never fall below 1/K.
        self.assertGreaterEqual(rows['ACC (Hungarian matching)'], 1.0 / K - 1e-9)
        self.assertIn('median resolution of the averages, FRC 0.5 (Å)', rows)



class TestSimcryoForms(SimcryoTestBase):
    """The forms show the engine's real defaults (read from its config dataclasses)."""

    def test_form_defaults_are_the_engine_defaults(self):
        import dataclasses
        from simcryo.classify.config import ClassifyConfig
        from simcryo.commands.align import AlignConfig
        from simcryo.denoise.config import DenoiseConfig
        configs = {ProtSimcryoClassify2D: ClassifyConfig, ProtSimcryoAlignAverage: AlignConfig,
                   ProtSimcryoDenoise: DenoiseConfig}
        for protClass, config in configs.items():
            defaults = {f.name: f.default for f in dataclasses.fields(config)}
            prot = self.newProtocol(protClass)
            self.assertGreater(len(prot._engineParamFields), 2, protClass)
            choices = getattr(prot, '_engineChoices', {})
            for name, field in prot._engineParamFields:
                value = getattr(prot, name).get()
                if name in choices:  # an EnumParam holds the index of the engine's choice
                    value = choices[name][value]
                self.assertEqual(value, defaults[field],
                                 '%s.%s vs --%s' % (protClass.__name__, name, field))
                param = prot.getParam(name)
                self.assertIn('--%s' % field.replace('_', '-'), param.help.get())
        cls2d = self.newProtocol(ProtSimcryoClassify2D)
        self.assertEqual(cls2d.pretextEpochs.get(), ClassifyConfig.pretext_epochs)
        self.assertEqual(cls2d.refineIterations.get(), ClassifyConfig.refine_iterations)
        self.assertTrue(cls2d.getParam('equalize').help.get())

    def test_every_form_parameter_has_help(self):
        from pyworkflow.protocol.params import LabelParam, Line
        from scipion_simcryo.protocols import ProtSimcryoEvaluate, ProtSimcryoSimulate
        for protClass in (ProtSimcryoClassify2D, ProtSimcryoAlignAverage, ProtSimcryoDenoise,
                          ProtSimcryoEvaluate, ProtSimcryoSimulate):
            prot = self.newProtocol(protClass)
            for name, param in prot._definition.iterAllParams():
                if isinstance(param, (LabelParam, Line)) or name in (
                        'hostName', 'numberOfThreads', 'numberOfMpi', 'inputParticles',
                        'inputClasses', 'inputVolume', 'defocusMin', 'defocusMax',
                        'particlesPerClass', 'applyCtf', 'voltage', 'sphericalAberration',
                        'amplitudeContrast', 'otherClasses', 'noiseParticles',
                        'evaluateAgainst', 'gpuList', 'useGpu', 'queueParams', 'useQueue',
                        'useQueueForSteps', 'runName', 'runMode', 'expertLevel'):
                    continue
                self.assertTrue(param.help.get(), '%s.%s has no help'
                                % (protClass.__name__, name))


class TestSimcryoPhaseFlipped(SimcryoTestBase):
    """Particles already phase-flipped are not flipped again by any protocol."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.sim = cls.runSimulate(snr=2.0)
        parts = cls.sim.outputParticles
        flipped = cls.sim._createSetOfParticles(suffix='flipped')
        flipped.copyInfo(parts)
        flipped.copyItems(parts)
        flipped.setIsPhaseFlipped(True)
        cls.sim._defineOutputs(flippedParticles=flipped)
        cls.sim._store()
        cls.flipped = cls.sim.flippedParticles

    def test_classify_does_not_flip_again(self):
        prot = classify(self, self.flipped)
        runLog = prot._readRunLog()
        self.assertIs(runLog['config']['phase_flip'], False)
        self.assertIn('--no-phase-flip', prot._getEngineArgs())
        from simcryo.io.star import read_star
        optics = read_star(prot._getFileName('input_star'))['optics']
        self.assertEqual(optics.as_int('rlnCtfDataArePhaseFlipped')[0], 1)
        self.assertTrue(any('already phase-flipped' in w for w in prot.warnings()))
        # the same particles not flagged: flipped (the engine default)
        normal = self.newProtocol(ProtSimcryoClassify2D,
                                  inputParticles=self.sim.outputParticles)
        self.assertIn('--phase-flip', normal._getEngineArgs().split())

    def test_denoise_and_align_do_not_flip_again(self):
        den = self.newProtocol(ProtSimcryoDenoise, inputParticles=self.flipped)
        self.assertIn('--no-phase-flip', den._getEngineArgs().split())
        classes = addClassesOutput(self.sim, self.flipped,
                                   lambda p: p.getAttributeValue(cts.TRUE_CLASS),
                                   'flippedClasses')
        # align keeps the CTF and flags the optics: the engine then uses |CTF|
        star = os.path.join(self.proj.getTmpPath(), 'flipped_classes.star')
        convert.writeClassesStar(classes, star)
        blocks = read_star(star)
        self.assertEqual(blocks['optics'].as_int('rlnCtfDataArePhaseFlipped')[0], 1)
        self.assertIn('rlnDefocusU', blocks['particles'])
        self.assertTrue(load_particles(star).ctf.flipped.all())


class TestSimcryoClassifyContinue(SimcryoTestBase):
    """Continue after changing K reuses the pretext and finishes."""

    def test_continue_with_a_new_K_reuses_the_pretext(self):
        from pyworkflow.protocol.constants import MODE_RESUME
        sim = self.runSimulate(snr=2.0)
        prot = classify(self, sim.outputParticles, numberOfClasses=K)
        self.assertEqual(len(prot.outputAverages), K)
        # the user edits K in the form and presses Continue
        prot.numberOfClasses.set(K + 1)
        prot.runMode.set(MODE_RESUME)
        self.launchProtocol(prot)
        prot = self.proj.getProtocol(prot.getObjId())   # outputs as stored by the new run
        self.assertTrue(prot.isFinished())
        log = open(prot.getStdoutLog()).read()
        resume = [line for line in log.splitlines() if '[classify] resume:' in line]
        self.assertTrue(resume, 'the engine did not resume: %s' % log[-2000:])
        reused = resume[-1].split('reusing', 1)[1].split(';')[0]
        self.assertIn('pretext', reused)
        self.assertIn('K', resume[-1].split('changed:', 1)[-1])
        runLog = prot._readRunLog()
        self.assertEqual(runLog['config']['K'], K + 1)
        with mrcfile.open(prot._getFileName('out_averages')) as m:
            self.assertEqual(m.data.shape[0], K + 1)     # the new K came out
        nonEmpty = sum(1 for n in runLog['class_sizes'] if n)
        self.assertEqual(prot.outputClasses.getSize(), nonEmpty)
        self.assertEqual(len(prot.outputAverages), nonEmpty)
        self.assertEqual(sum(c.getSize() for c in prot.outputClasses), N)

    def test_initial_references_set_K_and_start_the_classes(self):
        """The simulation's true projections as initial references: K is their number, each
        class is its reference's view, and the run says so."""
        sim = self.runSimulate(snr=2.0)
        refs = sim.outputReferences
        prot = classify(self, sim.outputParticles, numberOfClasses=K + 2,
                        inputReferences=refs)
        runLog = prot._readRunLog()
        self.assertEqual(runLog['config']['K'], K)
        self.assertIn('initial references', runLog['classes_from'])
        self.assertNotIn('neighbor_purity@10', runLog['metrics'])
        self.assertGreaterEqual(runLog['metrics']['acc'], 0.9)
        self.assertEqual(sum(c.getSize() for c in prot.outputClasses), N)
        with mrcfile.open(prot._getFileName('input_references')) as m:
            self.assertEqual(m.data.shape, (K, BOX, BOX))
            self.assertAlmostEqual(float(m.voxel_size.x), refs.getSamplingRate(), places=3)
        self.assertIn('initial references', ' '.join(prot.summary()))
        self.assertIn('initial references', ' '.join(prot.getParsedMethods() or
                                                     prot._methods()))
