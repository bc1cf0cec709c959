"""Names shared by the plugin's protocols, converters, viewers and tests."""

# ---- Plugin variables (scipion.conf or environment) ----
SIMCRYO_PYTHON = 'SIMCRYO_PYTHON'              # interpreter that runs `python -m simcryo`
SIMCRYO_ENV_ACTIVATION = 'SIMCRYO_ENV_ACTIVATION'  # optional shell command run before it
SIMCRYO_CUDA_VERSION = 'SIMCRYO_CUDA_VERSION'  # override the CUDA build picked by installb

ENGINE_PACKAGE = 'simcryo'
ENGINE_VERSION = '0.1.0'
ENGINE_ENV_NAME = 'simcryo-%s' % ENGINE_VERSION
ENGINE_INSTALLED_FLAG = 'simcryo_%s_installed' % ENGINE_VERSION
TORCH_VERSION = '2.13.0'
# CUDA builds of torch we know how to pick (highest not above the facility's CUDA wins).
TORCH_CUDA_BUILDS = [(12, 8), (12, 6), (12, 4), (12, 1), (11, 8)]
# Engine commands sharded over torchrun's processes, one per GPU: a copy of
# simcryo.cli.DISTRIBUTED, since the GUI process imports nothing of the engine (a test checks
# that the two agree).
DISTRIBUTED_COMMANDS = ('align', 'classify', 'denoise')

# ---- Per-particle extras written on Scipion items (first item defines the sqlite schema) ----
# Truth of simulated data: attribute name = '_' + STAR label, so conversion is 1:1.
TRUE_CLASS = '_simcryoTrueClass'              # Integer, 1..K
TRUE_PSI = '_simcryoTruePsi'                  # Float, degrees
TRUE_ORIGIN_X = '_simcryoTrueOriginXAngst'    # Float, Angstrom
TRUE_ORIGIN_Y = '_simcryoTrueOriginYAngst'    # Float, Angstrom
TRUE_ROT = '_simcryoTrueAngleRot'             # Float, degrees (projection direction)
TRUE_TILT = '_simcryoTrueAngleTilt'           # Float, degrees
# Realistic simulations (simcryo simulate --junk-fraction, --contrast-sigma) write both on
# every particle.
TRUE_KIND = '_simcryoTrueKind'                # String: good, empty, blob, offcentre, other
TRUE_CONTRAST = '_simcryoTrueContrast'        # Float, the image's signal scale (1: none)
TRUTH_ATTRS = [TRUE_CLASS, TRUE_PSI, TRUE_ORIGIN_X, TRUE_ORIGIN_Y, TRUE_ROT, TRUE_TILT,
               TRUE_KIND, TRUE_CONTRAST]
TRUTH_INT_ATTRS = {TRUE_CLASS}
TRUTH_STR_ATTRS = {TRUE_KIND}

# Result of classification: probability of the assigned class (engine column
# _rlnMaxValueProbDistribution), in [0, 1].
CLASS_PROB = '_simcryoClassProb'
# Per-class extras on Class2D items.
CLASS_MEAN_PROB = '_simcryoMeanProb'

# ---- Engine output files (docs/ARCHITECTURE.md) ----
OUT_PARTICLES = 'particles.star'
OUT_AVERAGES = 'class_averages.mrcs'
OUT_RUNLOG = 'run.json'
OUT_REFERENCES = 'references.mrcs'
OUT_STACK = 'particles.mrcs'

# ---- Choices ----
NOISE_WHITE = 0
NOISE_REAL = 1
NOISE_CHOICES = ['white (target SNR)', 'real (harvested from particles)']

DENOISE_SELF = 0
DENOISE_GAN = 1
DENOISE_CHOICES = ['self-supervised (no reference)', 'reference-guided GAN (needs a volume)']

EVAL_TRUTH = 0
EVAL_OTHER = 1
EVAL_CHOICES = ['true labels of the particles (simulated data)',
                'another classification of the same particles']
