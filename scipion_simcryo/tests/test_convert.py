"""Conversion Scipion <-> engine files: pose matrices, particle STAR writing/reading."""
import math
import os

import mrcfile
import numpy as np

import pwem.objects as emobj
from pwem.convert.transformations import euler_matrix, euler_from_matrix
from pyworkflow.object import Float, Integer
from scipion_simcryo.tests.common import SimcryoUnitTest

from scipion_simcryo import constants as cts
from scipion_simcryo import convert
from simcryo.io.star import read_star, write_star


def _approx(value, rel=1e-6):
    """Comparable with == to any number within ``rel`` of ``value``."""
    class Approx:
        def __eq__(self, other):
            return math.isclose(other, value, rel_tol=rel)
    return Approx()


def _makeSet(tmp_path, n=6, box=16, apix=2.5, ctf=True, align=True, truth=True, acqOf=None):
    """n particles of a random stack; ``acqOf(i)``: the i-th particle's own Acquisition."""
    stack = str(tmp_path / 'parts.mrcs')
    data = np.random.default_rng(1).normal(size=(n, box, box)).astype(np.float32)
    with mrcfile.new(stack, overwrite=True) as m:
        m.set_data(data)
        m.voxel_size = apix
    parts = emobj.SetOfParticles(filename=str(tmp_path / 'particles.sqlite'))
    parts.setSamplingRate(apix)
    acq = emobj.Acquisition(voltage=200.0, sphericalAberration=2.0, amplitudeContrast=0.07,
                            magnification=50000)
    parts.setAcquisition(acq)
    parts.setHasCTF(ctf)
    if align:
        parts.setAlignment2D()
    for i in range(n):
        p = emobj.Particle(location=(i + 1, stack))
        p.setSamplingRate(apix)
        p.setAcquisition(acqOf(i) if acqOf else acq)
        if ctf:
            c = emobj.CTFModel()
            c.setStandardDefocus(15000.0 + 100 * i, 14000.0 + 100 * i, 30.0 + i)
            p.setCTF(c)
        if align:
            p.setTransform(convert.transformFromPose(10.0 * i - 20, 0.5 * i, -0.25 * i))
        if truth:
            setattr(p, cts.TRUE_CLASS, Integer(i % 3 + 1))
            setattr(p, cts.TRUE_PSI, Float(5.0 * i))
        parts.append(p)
    parts.write()
    return parts, data


class TestConvert(SimcryoUnitTest):

    # ----------------------------------------------------------------------------- poses
    def test_pose_matrix_round_trip(self):
        for psi in [0.0, 30.0, -75.5, 179.0, -179.9, 90.0]:
            for mirror in [False, True]:
                M = convert.matrixFromPose(psi, 3.25, -1.5, mirror)
                psi2, sx, sy, mirror2 = convert.poseFromMatrix(M)
                assert math.isclose(psi2, psi, abs_tol=1e-9), (psi, mirror)
                assert (sx, sy) == (3.25, -1.5)
                assert mirror2 == mirror
                assert np.isclose(np.linalg.det(M[:2, :2]), -1.0 if mirror else 1.0)


    def test_random_matrices_round_trip(self):
        rng = np.random.default_rng(0)
        for _ in range(200):
            psi = rng.uniform(-180, 180)
            sx, sy = rng.normal(size=2) * 5
            mirror = bool(rng.integers(2))
            M = convert.matrixFromPose(psi, sx, sy, mirror)
            M2 = convert.matrixFromPose(*convert.poseFromMatrix(M))
            np.testing.assert_allclose(M2, M, atol=1e-12)


    def test_pose_matches_relion_euler_convention(self):
        """Scipion's RELION converter builds 2D transforms as a ZYZ Euler matrix whose only angle
        is psi (about z); psi read back is the sum of the first and last ZYZ angles."""
        for psi in (12.0, -140.0, 95.0):
            M = convert.matrixFromPose(psi, 0, 0)
            R = euler_matrix(0.0, 0.0, math.radians(psi), 'szyz')
            np.testing.assert_allclose(M[:3, :3], R[:3, :3], atol=1e-12)
            a, _, c = euler_from_matrix(M, axes='szyz')
            assert math.isclose(math.degrees(a + c), psi, abs_tol=1e-9)


    def test_transform_shifts_are_pixels_in_last_column(self):
        t = convert.transformFromPose(10.0, 2.0, -4.0)
        assert t.getShifts()[:2] == (2.0, -4.0)


    # ----------------------------------------------------------------------------- particles
    def test_particle_star_writer(self):
        tmp_path = self.tmpPath()
        parts, _ = _makeSet(tmp_path)
        star = str(tmp_path / 'out.star')
        writer = convert.ParticleStarWriter(parts, writeAlignment=True)
        ids = writer.write(star)
        assert ids == list(range(1, 7))
        blocks = read_star(star)
        optics, b = blocks['optics'], blocks['particles']
        assert float(optics['rlnImagePixelSize'][0]) == 2.5
        assert float(optics['rlnVoltage'][0]) == 200.0
        assert int(optics['rlnImageSize'][0]) == 16
        assert len(b) == 6
        assert b['rlnImageName'][2] == '000003@%s' % os.path.abspath(str(tmp_path / 'parts.mrcs'))
        np.testing.assert_allclose(b.as_float('rlnDefocusU'), 15000.0 + 100 * np.arange(6))
        np.testing.assert_allclose(b.as_float('rlnAnglePsi'), 10.0 * np.arange(6) - 20, atol=1e-4)
        # Shifts in Angstrom = pixels * apix (RELION 3.1).
        np.testing.assert_allclose(b.as_float('rlnOriginXAngst'), 0.5 * np.arange(6) * 2.5,
                                   atol=1e-4)
        np.testing.assert_array_equal(b.as_int('simcryoTrueClass'), np.arange(6) % 3 + 1)


    def test_two_optics_groups_round_trip(self):
        """Particles of two microscopes -> two optics rows (RELION 3.1), read by the engine
        with each particle's own voltage, and read back with each particle's acquisition."""
        from simcryo.io import load_particles
        tmp_path = self.tmpPath()
        scopes = [(200.0, 2.0, 0.07), (300.0, 2.7, 0.1)]

        def acqOf(i):
            v, cs, q0 = scopes[i // 3]
            return emobj.Acquisition(voltage=v, sphericalAberration=cs, amplitudeContrast=q0,
                                     magnification=50000)
        parts, _ = _makeSet(tmp_path, acqOf=acqOf)
        star = str(tmp_path / 'two.star')
        convert.ParticleStarWriter(parts).write(star)
        blocks = read_star(star)
        optics, b = blocks['optics'], blocks['particles']
        self.assertEqual(list(optics.as_int('rlnOpticsGroup')), [1, 2])
        self.assertEqual(list(optics.as_float('rlnVoltage')), [200.0, 300.0])
        self.assertEqual(list(optics.as_float('rlnSphericalAberration')), [2.0, 2.7])
        self.assertEqual(list(b.as_int('rlnOpticsGroup')), [1, 1, 1, 2, 2, 2])
        engine = load_particles(star)
        np.testing.assert_allclose(np.asarray(engine.ctf.voltage).ravel(),
                                   [200.0] * 3 + [300.0] * 3)
        out = emobj.SetOfParticles(filename=str(tmp_path / 'read.sqlite'))
        convert.readSetOfParticles(star, out)
        out.write()
        items = [p.clone() for p in out]
        self.assertEqual([p.getAcquisition().getVoltage() for p in items],
                         [200.0] * 3 + [300.0] * 3)
        self.assertEqual([p.getAttributeValue('_rlnOpticsGroup') for p in items],
                         [1, 1, 1, 2, 2, 2])
        # ... and written again: the group numbers the particles carry are kept.
        again = str(tmp_path / 'again.star')
        convert.ParticleStarWriter(out).write(again)
        self.assertEqual(list(read_star(again)['particles'].as_int('rlnOpticsGroup')),
                         [1, 1, 1, 2, 2, 2])
        self.assertEqual(list(read_star(again)['optics'].as_float('rlnVoltage')),
                         [200.0, 300.0])

    def test_missing_acquisition_is_an_error_with_ctf(self):
        tmp_path = self.tmpPath()
        parts, _ = _makeSet(tmp_path, acqOf=lambda i: emobj.Acquisition(voltage=300.0,
                                                                       magnification=50000))
        parts.setAcquisition(emobj.Acquisition(voltage=300.0))
        with self.assertRaisesRegex(ValueError, 'spherical aberration'):
            convert.ParticleStarWriter(parts).write(str(tmp_path / 'x.star'))
        self.assertEqual(convert.missingAcquisition(parts.getAcquisition()),
                         ['spherical aberration (mm)', 'amplitude contrast'])
        # Without CTF the values are not needed: written without them.
        noCtf, _ = _makeSet(self.tmpPath(), ctf=False,
                            acqOf=lambda i: emobj.Acquisition(voltage=300.0,
                                                                       magnification=50000))
        noCtf.setAcquisition(emobj.Acquisition())
        star = str(tmp_path / 'noctf.star')
        convert.ParticleStarWriter(noCtf).write(star)
        self.assertNotIn('rlnSphericalAberration', read_star(star)['optics'])

    def test_phase_flipped_flag_is_written(self):
        tmp_path = self.tmpPath()
        parts, _ = _makeSet(tmp_path)
        parts.setIsPhaseFlipped(True)
        star = str(tmp_path / 'flipped.star')
        convert.ParticleStarWriter(parts).write(star)
        self.assertEqual(read_star(star)['optics'].as_int('rlnCtfDataArePhaseFlipped')[0], 1)

    def test_disabled_particles_are_skipped(self):
        tmp_path = self.tmpPath()
        parts, _ = _makeSet(tmp_path)
        p = parts[3].clone()
        p.setEnabled(False)
        parts.update(p)
        parts.write()
        ids = convert.ParticleStarWriter(parts).write(str(tmp_path / 'out.star'))
        assert ids == [1, 2, 4, 5, 6]


    def test_stack_conversion_copies_images(self):
        tmp_path = self.tmpPath()
        parts, data = _makeSet(tmp_path, ctf=False, align=False, truth=False)
        stack = str(tmp_path / 'copy.mrcs')
        convert.ParticleStarWriter(parts, stackFile=stack).write(str(tmp_path / 'c.star'))
        with mrcfile.open(stack) as m:
            np.testing.assert_allclose(m.data, data, atol=1e-5)


    def test_engine_result_round_trip(self):
        tmp_path = self.tmpPath()
        """An engine-like output (input rows + class/prob/pose) is read back per particle id."""
        parts, _ = _makeSet(tmp_path)
        star = str(tmp_path / 'in.star')
        convert.ParticleStarWriter(parts).write(star)
        blocks = read_star(star)
        b = blocks['particles']
        b.set('rlnClassNumber', [1, 2, 1, 2, 2, 1])
        b.set('rlnMaxValueProbDistribution', [0.9, 0.8, 0.7, 1.0, 0.5, 0.6])
        b.set('rlnAnglePsi', [0, 45, 90, -90, 180, -30])
        b.set('rlnOriginXAngst', [2.5, 0, 0, 0, 0, 5.0])
        b.set('rlnOriginYAngst', [0, -2.5, 0, 0, 0, 0])
        out = str(tmp_path / 'result.star')
        write_star(out, blocks)
        res = convert.EngineResult(out)
        assert res.apix == 2.5
        r = res.rowOf(6)
        assert res.classes[r] == 1
        psi, sx, sy, mirror = convert.poseFromMatrix(res.transform(r).getMatrix())
        assert (round(psi, 4), round(sx, 6), round(sy, 6), mirror) == (-30.0, 2.0, 0.0, False)
        assert list(res.classSizes()) == [3, 3]
        assert res.meanProbPerClass()[2] == _approx((0.8 + 1.0 + 0.5) / 3)


    def test_read_set_of_particles_carries_ctf_and_truth(self):
        tmp_path = self.tmpPath()
        parts, _ = _makeSet(tmp_path)
        star = str(tmp_path / 'sim.star')
        convert.ParticleStarWriter(parts).write(star)
        out = emobj.SetOfParticles(filename=str(tmp_path / 'read.sqlite'))
        convert.readSetOfParticles(star, out)
        out.write()
        assert out.getSize() == 6 and out.hasCTF()
        assert out.getSamplingRate() == 2.5
        assert out.getAcquisition().getVoltage() == 200.0
        items = [p.clone() for p in out]
        assert [p.getAttributeValue(cts.TRUE_CLASS) for p in items] == [1, 2, 3, 1, 2, 3]
        assert items[4].getCTF().getDefocusU() == _approx(15400.0)
        assert items[4].getCTF().getDefocusAngle() == _approx(34.0)
        assert items[1].getLocation() == (2, os.path.abspath(str(tmp_path / 'parts.mrcs')))


    def test_classes_star_and_truth_star(self):
        tmp_path = self.tmpPath()
        parts, _ = _makeSet(tmp_path)
        classes = emobj.SetOfClasses2D(filename=str(tmp_path / 'classes.sqlite'))
        classes.setImages(parts)
        # Class ids 5 and 9 (non-contiguous, as RELION leaves them) -> engine numbers 1 and 2.
        assignment = {1: 9, 2: 5, 3: 9, 4: 5, 5: 5, 6: 9}

        def update(item, row):
            item.setClassId(assignment[item.getObjId()])

        classes.classifyItems(updateItemCallback=update)
        classes.write()
        star = str(tmp_path / 'classes.star')
        truth = convert.truthFromParticles(parts)
        writer, numbering = convert.writeClassesStar(classes, star, keep={1, 2, 3, 4, 6})
        assert numbering == {1: 5, 2: 9}
        b = read_star(star)['particles']
        ids = list(b.as_int('rlnImageId'))
        assert ids == [2, 4, 1, 3, 6] == writer.ids
        assert list(b.as_int('rlnClassNumber')) == [1, 1, 2, 2, 2]
        convert.writeTruthStar(str(tmp_path / 'truth.star'), writer.names, writer.ids, truth)
        t = read_star(str(tmp_path / 'truth.star'))['particles']
        assert list(t['rlnImageName']) == list(b['rlnImageName'])
        assert list(t.as_int('simcryoTrueClass')) == [2, 1, 1, 3, 3]
        other = convert.truthFromClasses(classes)
        assert other[6] == {'simcryoTrueClass': 2}


    def test_class_sets_are_scored_without_alignment_when_absent(self):
        tmp_path = self.tmpPath()
        parts, _ = _makeSet(tmp_path, align=False)
        classes = emobj.SetOfClasses2D(filename=str(tmp_path / 'classes.sqlite'))
        classes.setImages(parts)
        classes.classifyItems(updateItemCallback=lambda item, row: item.setClassId(1))
        classes.write()
        convert.writeClassesStar(classes, str(tmp_path / 'c.star'))
        assert 'rlnAnglePsi' not in read_star(str(tmp_path / 'c.star'))['particles']


    def test_format_suffix_and_locations(self):
        assert convert.stripFormatSuffix('/a/b.mrc:mrcs') == '/a/b.mrc'
        assert convert.locationToRelion(0, '/a/b.mrc') == '000001@/a/b.mrc'
        assert convert.relionToLocation('000012@/x/y.mrcs') == (12, '/x/y.mrcs')


    def test_convert_package_one_module_per_concern(self):
        """`from scipion_simcryo import convert` exposes every public converter; each lives in
        the module of its concern."""
        from scipion_simcryo.convert import (engine_results, locations, poses, stacks,
                                             star_writer, truth)
        homes = {poses: ['matrixFromPose', 'poseFromMatrix', 'transformFromPose'],
                 locations: ['locationToRelion', 'relionToLocation', 'stripFormatSuffix',
                             'projectRelative'],
                 stacks: ['needsStackConversion', 'writeImagesStack', 'writeClassAverages'],
                 star_writer: ['ParticleStarWriter', 'writeClassesStar', 'ctfToRow',
                               'acquisitionRow'],
                 truth: ['truthFromParticles', 'truthFromClasses', 'writeTruthStar',
                         'setTruthAttributes'],
                 engine_results: ['EngineResult', 'readSetOfParticles', 'rowToCtf',
                                  'opticsToAcquisition']}
        for module, names in homes.items():
            for name in names:
                assert getattr(convert, name) is getattr(module, name), name
                assert name in convert.__all__
        assert all(hasattr(convert, name) for name in convert.__all__)
