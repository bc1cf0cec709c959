"""RELION 2D and simcryo classify side by side in one headless Scipion project.

simulate (4 views x 40 particles, 40 px, CTF) -> RELION 3.1 2D classification
(scipion-em-relion 4.0.x) and simcryo classify on the same particles -> simcryo evaluate on both.

Needs the Debian `relion` package and `scipion-em-relion==4.0.20` (`.ci/install_relion.sh`);
skipped with the reason otherwise.
"""
import importlib.metadata
import math
import os
import shutil
import unittest

RELION_PLUGIN_SERIES = "4.0."
# Where .ci/install_relion.sh links the RELION 3.1 binaries when RELION_HOME is not exported.
DEFAULT_RELION_HOME = os.path.join(
    os.environ.get("SIMCRYO_RELION_ROOT") or os.path.expanduser("~/.simcryo-relion"),
    "relion-3.1")


def _relion_skip_reason():
    if shutil.which("relion_refine") is None:
        return "RELION not installed (relion_refine not on PATH): run .ci/install_relion.sh"
    try:
        version = importlib.metadata.version("scipion-em-relion")
    except importlib.metadata.PackageNotFoundError:
        return "scipion-em-relion not installed: run .ci/install_relion.sh <venv>"
    if not version.startswith(RELION_PLUGIN_SERIES):
        return (f"scipion-em-relion {version} found; 4.0.20 is needed to drive RELION 3.1 "
                "(5.x passes RELION 4/5 options)")
    home = os.environ.get("RELION_HOME", DEFAULT_RELION_HOME)
    if "relion-3.1" not in os.path.basename(home.rstrip("/")):
        return f"RELION_HOME={home} must be a folder named relion-3.1 (.ci/install_relion.sh)"
    if not os.path.exists(os.path.join(home, "bin", "relion_refine")):
        return f"{home}/bin/relion_refine missing: run .ci/install_relion.sh"
    return None


SKIP_REASON = _relion_skip_reason()
if SKIP_REASON is None:
    # The relion plugin reads RELION_HOME when Scipion registers it, and the protocol
    # subprocesses inherit it from here.
    os.environ.setdefault("RELION_HOME", DEFAULT_RELION_HOME)
    os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")

from pyworkflow.tests import BaseTest, setupTestProject  # noqa: E402

BOX = 40
APIX = 3.0
K = 4
PER_CLASS = 40
N = K * PER_CLASS
RELION_ITERATIONS = 8
OUR_MIN_ACC = 0.7   # 4 views >= 45 deg apart at SNR 1 (chance 0.25; the engine reached 1.0)


@unittest.skipIf(SKIP_REASON is not None, SKIP_REASON or "")
class TestRelionSideBySide(BaseTest):
    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        import pwem
        relion = pwem.Domain.getPluginModule("relion")
        relion.Plugin._defineVariables()  # RELION_HOME may have been set after registration
        cls.relionPlugin = relion.Plugin
        cls.sim = cls._simulate()

    @classmethod
    def _simulate(cls):
        from scipion_simcryo.protocols import ProtSimcryoSimulate
        prot = cls.newProtocol(ProtSimcryoSimulate, objLabel="simulate 4 views",
                               boxSize=BOX, samplingRate=APIX, numberOfClasses=K,
                               particlesPerClass=PER_CLASS, minSeparation=45.0,
                               snr=1.0, applyCtf=True,
                               defocusMin=8000., defocusMax=15000., numberOfThreads=2,
                               seed=0)
        cls.launchProtocol(prot)
        assert prot.outputParticles.getSize() == N
        return prot

    def _relion2d(self):
        from relion.protocols import ProtRelionClassify2D
        self.assertEqual(self.relionPlugin.getActiveVersion(), "3.1")
        prot = self.newProtocol(ProtRelionClassify2D, objLabel="relion 2D",
                                numberOfClasses=K, numberOfIterations=RELION_ITERATIONS,
                                doCTF=True, maskDiameterA=int(0.9 * BOX * APIX),
                                doGpu=False, numberOfMpi=1, numberOfThreads=2,
                                extraParams="--random_seed 0")
        prot.inputParticles.set(self.sim)
        prot.inputParticles.setExtended("outputParticles")
        self.launchProtocol(prot)
        return prot

    def _simcryo2d(self):
        from scipion_simcryo.protocols import ProtSimcryoClassify2D
        prot = self.newProtocol(ProtSimcryoClassify2D, objLabel="simcryo classify",
                                numberOfClasses=K, numberOfThreads=2, seed=0,
                                useGpu=False, **FAST_CLASSIFY)
        prot.inputParticles.set(self.sim)
        prot.inputParticles.setExtended("outputParticles")
        self.launchProtocol(prot)
        return prot

    def _evaluate(self, classifier, label):
        from scipion_simcryo.protocols import ProtSimcryoEvaluate
        prot = self.newProtocol(ProtSimcryoEvaluate, objLabel=f"evaluate {label}")
        prot.inputClasses.set(classifier)
        prot.inputClasses.setExtended("outputClasses")
        prot.trueReferences.set(self.sim)
        prot.trueReferences.setExtended("outputReferences")
        self.launchProtocol(prot)
        return prot

    def _checkClasses(self, classes, who):
        sizes = [cls.getSize() for cls in classes]
        self.assertEqual(sum(sizes), N, f"{who}: class sizes {sizes} do not sum to {N}")
        self.assertGreaterEqual(sum(1 for s in sizes if s > 0), 2,
                                f"{who} put every particle in one class: {sizes}")
        self.assertLessEqual(len(sizes), K)
        self.assertAlmostEqual(classes.getImages().getSamplingRate(), APIX, places=3)
        for cls in classes:
            rep = cls.getRepresentative()
            if cls.getSize():
                self.assertIsNotNone(rep, f"{who}: class {cls.getObjId()} has no average")
                self.assertTrue(os.path.exists(rep.getFileName()), rep.getFileName())
        ids = sorted(p.getObjId() for cls in classes for p in cls)
        self.assertEqual(ids, sorted(p.getObjId() for p in self.sim.outputParticles))

    def _scores(self, evalProt, who):
        from scipion_simcryo.protocols.protocol_evaluate import flattenMetrics
        flat = flattenMetrics(evalProt.getReport() or {})
        scores = {}
        for name in ("acc", "nmi"):
            found = [v for k, v in flat.items() if k.split(".")[-1] == name]
            self.assertTrue(found, f"{who}: evaluate did not report {name}: {flat}")
            scores[name] = value = found[0]
            self.assertTrue(isinstance(value, float) and math.isfinite(value)
                            and 0.0 <= value <= 1.0, f"{who}: {name}={value!r}")
        return scores

    def test_relion_and_simcryo_on_the_same_particles(self):
        relion = self._relion2d()
        ours = self._simcryo2d()
        self._checkClasses(relion.outputClasses, "RELION")
        self.assertTrue(all(cls.hasAlignment2D() for cls in relion.outputClasses))
        self._checkClasses(ours.outputClasses, "simcryo")
        relionScores = self._scores(self._evaluate(relion, "relion"), "RELION")
        ourScores = self._scores(self._evaluate(ours, "simcryo"), "simcryo")
        print("side-by-side  %-8s ACC %.3f NMI %.3f" % ("RELION", relionScores["acc"],
                                                        relionScores["nmi"]))
        print("side-by-side  %-8s ACC %.3f NMI %.3f" % ("simcryo", ourScores["acc"],
                                                        ourScores["nmi"]))
        self.assertGreaterEqual(ourScores["acc"], OUR_MIN_ACC)


# Fastest engine settings that still learn 4 views: few epochs, 4 test-time rotations.
# Engine flags go through extraParams so the test does not depend on the form's defaults.
FAST_CLASSIFY = {"extraParams": "--pretext-epochs 10 --scan-epochs 20 --selflabel-epochs 5 "
                                "--tta-rotations 4 --average-iterations 2"}
