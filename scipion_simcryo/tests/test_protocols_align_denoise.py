"""ProtSimcryoAlignAverage (on classes made from the true labels, as a RELION/CL2D result
would arrive) and ProtSimcryoDenoise, in a headless project."""
import os

import mrcfile
import numpy as np
import pytest

from pwem.constants import ALIGN_2D

from scipion_simcryo import constants as cts
from scipion_simcryo import convert
from scipion_simcryo.protocols import (ProtSimcryoAlignAverage, ProtSimcryoDenoise,
                                       ProtSimcryoEvaluate)
from scipion_simcryo.tests.common import (SimcryoTestBase, addClassesOutput, engineHas,
                                          fastArgs, K, BOX, N)

pytestmark = pytest.mark.skipif(not engineHas('simulate'),
                                reason='engine command `simcryo simulate` not available')


class TestSimcryoAlignDenoise(SimcryoTestBase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.sim = cls.runSimulate(snr=2.0, shiftSigma=1.0)
        cls.truthClasses = addClassesOutput(
            cls.sim, cls.sim.outputParticles,
            lambda p: p.getAttributeValue(cts.TRUE_CLASS), 'truthClasses')

    @pytest.mark.skipif(not engineHas('align'), reason='`simcryo align` not available')
    def test_align_average_any_classes(self):
        prot = self.newProtocol(ProtSimcryoAlignAverage, inputClasses=self.truthClasses,
                                iterations=3, useGpu=False, numberOfThreads=2)
        prot = self.launchProtocol(prot)
        classes, parts = prot.outputClasses, prot.outputParticles
        apix = self.sim.outputParticles.getSamplingRate()

        # Every particle is classified once, in the class it came in with (no re-assignment).
        self.assertEqual(sum(c.getSize() for c in classes), N)
        self.assertEqual(classes.getSize(), K)
        self.assertSetSize(parts, N)
        self.assertEqual(parts.getAlignment(), ALIGN_2D)

        # Representatives: the engine's averages, right box and pixel size, not blank.
        with mrcfile.open(prot._getFileName('out_averages')) as m:
            engineAverages = m.data.copy()
        self.assertEqual(engineAverages.shape, (K, BOX, BOX))
        for cls in classes:
            self.assertEqual(cls.getAlignment(), ALIGN_2D)
            rep = cls.getRepresentative()
            self.assertEqual(rep.getIndex(), cls.getObjId())
            self.assertEqual(rep.getSamplingRate(), apix)
            self.assertGreater(float(engineAverages[rep.getIndex() - 1].std()), 0)

        # Scipion matrices agree with the engine's psi / shifts (same particles, same order).
        result = convert.EngineResult(prot._getFileName('out_particles'), apix=apix)
        for cls in classes:
            for p in cls:
                r = result.rowOf(p.getObjId())
                self.assertEqual(p.getClassId(), result.classes[r])
                self.assertEqual(cls.getObjId(), result.classes[r])
                truth = p.getAttributeValue(cts.TRUE_CLASS)
                self.assertEqual(cls.getObjId(), truth)
                psi, sx, sy, mirror = convert.poseFromMatrix(p.getTransform().getMatrix())
                self.assertFalse(mirror)
                dpsi = (psi - result.psi[r] + 180) % 360 - 180
                self.assertAlmostEqual(dpsi, 0.0, places=3)
                self.assertAlmostEqual(sx * apix, result.ox[r], places=3)
                self.assertAlmostEqual(sy * apix, result.oy[r], places=3)
                prob = p.getAttributeValue(cts.CLASS_PROB)
                self.assertTrue(0.0 <= prob <= 1.0)
        # the methods text reports the search and the mask the engine used
        methods = ' '.join(prot.methods())
        self.assertIn('real-space polar rings', methods)
        self.assertIn('3 rotation candidates per particle', methods)
        self.assertIn('a final check of every 15 degrees', methods)
        runLog = prot._readRunLog()
        self.assertIn('inside a circular mask of %.0f Å diameter (%.1f px radius, estimated '
                      'from the particles)' % (runLog['mask_diameter_A'],
                                               runLog['mask_radius_px']), methods)
        self.assertAlmostEqual(runLog['mask_diameter_A'], 2 * runLog['mask_radius_px'] * apix,
                               places=2)
        self.assertIn('Mask used: %.0f Å diameter' % runLog['mask_diameter_A'],
                      '\n'.join(prot.summary()))

        # Alignment against the known poses (modulo each class frame) at SNR 2.
        if engineHas('evaluate'):
            ev = self.launchProtocol(self.newProtocol(ProtSimcryoEvaluate,
                                                      inputClasses=classes))
            rows = dict(ev.getMetricsTable())
            self.assertLess(rows['median in-plane angle error (deg)'], 10.0)
            self.assertAlmostEqual(rows['ACC (Hungarian matching)'], 1.0, places=4)

    @pytest.mark.skipif(not engineHas('align'), reason='`simcryo align` not available')
    def test_align_validation(self):
        prot = self.newProtocol(ProtSimcryoAlignAverage, inputClasses=self.truthClasses)
        self.assertEqual(prot.validate(), [])
        self.assertIn('--no-reassign', prot._getEngineArgs())
        self.assertNotIn('--mask-', prot._getEngineArgs())
        boxA = BOX * self.sim.outputParticles.getSamplingRate()
        prot = self.newProtocol(ProtSimcryoAlignAverage, inputClasses=self.truthClasses,
                                maskDiameterA=int(boxA) + 1)
        self.assertTrue(any('wider than the box' in e for e in prot.validate()))
        prot = self.newProtocol(ProtSimcryoAlignAverage, inputClasses=self.truthClasses,
                                maskDiameterA=int(boxA) // 2)
        self.assertEqual(prot.validate(), [])
        self.assertIn('--mask-diameter %d' % (int(boxA) // 2), prot._getEngineArgs())

    @pytest.mark.skipif(not engineHas('denoise'), reason='`simcryo denoise` not available')
    def test_denoise_keeps_ids_ctf_and_sampling(self):
        inputSet = self.sim.outputParticles
        diameter = int(0.6 * BOX * inputSet.getSamplingRate())
        prot = self.newProtocol(ProtSimcryoDenoise, inputParticles=inputSet,
                                useGpu=False, numberOfThreads=2, maskDiameterA=diameter,
                                extraParams=fastArgs('denoise'))
        self.assertIn('--mask-diameter %d' % diameter, prot._getEngineArgs())
        prot = self.launchProtocol(prot)
        # the engine used diameter / 2 / apix px, and the summary says so (from run.json)
        runLog = prot._readRunLog()
        self.assertAlmostEqual(runLog['mask_radius_px'],
                               diameter / 2.0 / inputSet.getSamplingRate(), places=3)
        self.assertIn('Mask used: %d Å diameter (%.1f px radius, as given).'
                      % (diameter, runLog['mask_radius_px']), '\n'.join(prot.summary()))
        self.assertIn('circular mask of %d Å diameter' % diameter, ' '.join(prot.methods()))
        out = prot.outputParticles
        self.assertSetSize(out, N)
        self.assertTrue(out.hasCTF())
        self.assertEqual(out.getSamplingRate(), inputSet.getSamplingRate())
        self.assertEqual(out.getXDim(), BOX)
        stack = None
        for a, b in zip(inputSet, out):
            self.assertEqual(a.getObjId(), b.getObjId())
            self.assertAlmostEqual(a.getCTF().getDefocusU(), b.getCTF().getDefocusU(), 3)
            self.assertEqual(a.getAttributeValue(cts.TRUE_CLASS),
                             b.getAttributeValue(cts.TRUE_CLASS))
            self.assertNotEqual(os.path.abspath(a.getFileName()),
                                os.path.abspath(b.getFileName()))
            stack = b.getFileName()
        with mrcfile.open(stack) as m:
            self.assertEqual(m.data.shape, (N, BOX, BOX))
            self.assertTrue(np.isfinite(m.data).all())


HAND_VOL = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..', '..', 'shared',
                                        'data', 'hand-vol.mrc'))


@pytest.mark.skipif(not os.path.exists(HAND_VOL),
                    reason='reference volume ../shared/data/hand-vol.mrc not found')
@pytest.mark.skipif(not (engineHas('simulate') and engineHas('denoise')),
                    reason='needs simcryo simulate and denoise')
class TestSimcryoVolumeInput(SimcryoTestBase):
    """An imported volume drives the simulation and the reference-guided (GAN) denoiser."""

    def test_simulate_from_volume_and_gan_denoise(self):
        from scipion_simcryo.protocols.protocol_simulate import VOLUME
        vol = self.importVolume(HAND_VOL, 1.0).outputVolume
        sim = self.runSimulate(volumeSource=VOLUME, inputVolume=vol, boxSize=BOX,
                               particlesPerClass=4)
        parts = sim.outputParticles
        self.assertSetSize(parts, K * 4)
        self.assertEqual(parts.getXDim(), BOX)
        # 64 px at 1 Å/px resampled to 32 px: 2 Å/px.
        self.assertAlmostEqual(parts.getSamplingRate(), 2.0, places=3)
        den = self.newProtocol(ProtSimcryoDenoise, inputParticles=parts,
                               denoiseMode=cts.DENOISE_GAN, inputVolume=vol, useGpu=False,
                               # the hand fills most of the 32 px box: 30 px at 2 Å/px
                               maskDiameterA=60,
                               numberOfThreads=2, extraParams=fastArgs('denoise'))
        self.assertIn('--mode reference', den._getEngineArgs())
        den = self.launchProtocol(den)
        self.assertSetSize(den.outputParticles, K * 4)
        self.assertEqual(den.outputParticles.getSamplingRate(), parts.getSamplingRate())
        self.assertTrue(den.outputParticles.hasCTF())
