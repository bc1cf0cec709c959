"""Input shared by the protocol tests that need classes: simulated particles and their true
labels as a SetOfClasses2D (as a RELION or CL2D result would arrive)."""
from scipion_simcryo import constants as cts
from scipion_simcryo.tests.common import addClassesOutput


def simulateTruthClasses(testClass, **simulateArgs):
    """Run the simulation in `testClass`'s project; sets ``sim`` and ``truthClasses`` on it."""
    testClass.sim = testClass.runSimulate(**simulateArgs)
    testClass.truthClasses = addClassesOutput(
        testClass.sim, testClass.sim.outputParticles,
        lambda p: p.getAttributeValue(cts.TRUE_CLASS), 'truthClasses')
