"""Every hyperparameter of `simcryo classify`, with documented defaults.

The defaults are the CPU preset measured in benchmarks/classify.py (2 cores, 1-2k particles of
64 px in a few minutes); on a GPU raise `pretext_epochs` and `width` for harder data.
"""
from dataclasses import dataclass, field

from simcryo.config import force_field, mask_diameter_field
from simcryo.errors import SimcryoError


def _f(default, help_text, **meta):
    return field(default=default, metadata={"help": help_text, **meta})


@dataclass
class ClassifyConfig:
    # --- input / output
    i: str = _f("", "input particles: RELION STAR (3.0/3.1) or an MRC stack (.mrcs)",
                metavar="PARTICLES.star")
    o: str = _f("", "output folder (created; not the input's folder)", metavar="DIR")
    resume: bool = _f(False, "continue the run in --o from OUT/checkpoint.pt (none: start "
                      "fresh). The input must be the same (STAR rows, stack sizes and "
                      "modification times), else an error names what differs. Unchanged "
                      "parameters: the same result as an uninterrupted run. Changed ones: "
                      "the stages before the first one they affect (preprocess, pretext, "
                      "features, scan, selflabel, refine, averages) are reused, that stage "
                      "and the later ones recomputed, as a fresh run with the new parameters "
                      "would (e.g. a new --K reuses the trained network and its features). "
                      "--device and --threads never count. No --force needed")
    force: bool = force_field()
    # --- problem
    K: int = _f(10, "number of classes (with --references: their number, whatever is given)")
    references: str = _f("", "initial references: an MRC stack of class averages (e.g. "
                         "another program's) of the particles' box and pixel size, one "
                         "class each. Each particle starts in the class of the reference "
                         "it correlates best with (normalised, at its best in-plane pose) "
                         "and the EM refinement goes on from there; the contrastive stages "
                         "do not run. Empty: classes from the contrastive stages",
                         metavar="REFS.mrcs")
    apix: float = _f(0.0, "pixel size in Å/px (0: from the STAR optics or the MRC header)")
    # --- preprocessing
    mask_diameter: float = mask_diameter_field(
        used_for="background mask and crop around the particle, at most 0.9 x the box",
        auto_help="estimated from the images' radial variance")
    working_box: int = _f(32, "largest box in px after cropping around the particle and "
                          "Fourier downsampling (smaller when the data's resolution allows)")
    pretext_box: int = _f(24, "box in px the contrastive network sees (Fourier crop of the "
                          "working box; 0: the working box)")
    phase_flip: bool = _f(True, "flip CTF phases before learning (only when CTF columns exist)")
    equalize: bool = _f(False, "histogram-equalise each image (the paper's preprocessing)")
    wiener: bool = _f(True, "weight frequencies by the spectral SNR measured on the data "
                      "(particle disc vs. background) and Fourier-crop where it vanishes")
    lowpass: float = _f(0.0, "low-pass filter in Å applied when caching (0: none beyond the "
                        "Fourier crop)")
    # --- encoder
    encoder: str = _f("invariant", "what learns the features: invariant (an MLP on "
                      "rotation-invariant ring spectra of centred particles, trained "
                      "contrastively with each particle's rotational neighbours as positives; "
                      "SCAN clusters with those neighbours) or resnet (the paper's SimCLR "
                      "ResNet-18 on augmented images; --width, --pretext-box, the "
                      "augmentations and --tta-rotations apply to it only)",
                      choices=("invariant", "resnet"))
    invariant_angular: int = _f(12, "invariant encoder: angular frequencies kept per ring "
                                "(in-plane detail up to 360/n degrees)")
    invariant_dim: int = _f(256, "invariant encoder: principal components of the cross-ring "
                            "invariants the MLP sees")
    invariant_exact_limit: int = _f(5000, "invariant encoder: up to this many particles every "
                                    "pair is compared over all rotations; above, each "
                                    "particle only with its --invariant-candidates nearest "
                                    "by the invariants (cost ~N x candidates, not N^2)")
    invariant_candidates: int = _f(200, "invariant encoder: candidates per particle above "
                                   "--invariant-exact-limit")
    # --- network
    width: int = _f(16, "ResNet-18 base width (64 = paper; 16 = CPU preset)")
    feature_dim: int = _f(128, "projection head output dimension (NT-Xent space)")
    # --- pretext (SimCLR)
    pretext_epochs: int = _f(20, "contrastive training epochs")
    batch_size: int = _f(256, "contrastive batch size (pairs)")
    lr: float = _f(2e-3, "AdamW learning rate for the pretext stage (cosine schedule)")
    weight_decay: float = _f(1e-4, "AdamW weight decay")
    temperature: float = _f(0.2, "NT-Xent temperature")
    # --- augmentations (applied batched on the device)
    max_shift: float = _f(0.08, "random shift, fraction of the working box")
    scale_min: float = _f(0.9, "crop+resize: smallest zoom factor")
    scale_max: float = _f(1.1, "crop+resize: largest zoom factor")
    contrast: float = _f(0.3, "contrast jitter: gain drawn in [1-c, 1+c]")
    brightness: float = _f(0.2, "brightness jitter: offset drawn in [-b, b] (units of image std)")
    noise: float = _f(0.5, "added Gaussian noise std drawn in [0, noise] (units of image std)")
    blur: float = _f(1.0, "Gaussian blur sigma drawn in [0, blur] px (applied to half the views)")
    mirror: bool = _f(False, "also mirror views (merges mirror-related views)")
    # --- features and neighbours
    tta_rotations: int = _f(8, "in-plane rotations averaged when extracting features")
    knn: int = _f(20, "neighbours mined per particle for SCAN")
    # --- SCAN clustering
    scan_heads: int = _f(10, "independent clustering heads (the lowest loss one is kept)")
    scan_epochs: int = _f(100, "SCAN epochs (heads on the frozen features)")
    scan_lr: float = _f(1e-2, "SCAN learning rate (Adam)")
    entropy_weight: float = _f(5.0, "weight of the entropy term of the SCAN loss")
    # --- self-labelling
    selflabel_epochs: int = _f(30, "self-labelling epochs (0 disables the stage)")
    confidence: float = _f(0.95, "self-labelling: minimum class probability of a pseudo-label")
    # --- multi-reference refinement (EM against the class averages)
    refine_iterations: int = _f(10, "EM iterations of particles against the class averages "
                                "(0 disables the stage)")
    refine_align_iterations: int = _f(2, "alignment-only iterations before the EM (classes "
                                      "fixed, each class seeded by its most central member)")
    refine_init: str = _f("clustering", "partition the refinement starts from: clustering "
                          "(SCAN + self-labelling) or random (uniform labels; the ablation "
                          "that shows what the clustering contributes)",
                          choices=("clustering", "random"))
    refine_seed_candidates: int = _f(8, "members per class tried as the class's first "
                                     "reference (the one most like the others wins)")
    refine_ctf: bool = _f(False, "compare the averages through each particle's CTF and "
                          "CTF-correct the averages (when CTF columns exist); off by default: "
                          "it scored lower on both simulated sets measured (phantom and hand "
                          "at SNR 0.1, one seed each)")
    refine_angles: int = _f(36, "in-plane angles searched in the refinement (360/n degrees)")
    refine_search_classes: int = _f(3, "classes each particle is scored against in the "
                                    "EM iterations after the first (see --refine-first-"
                                    "search-classes): its own and those it scored best "
                                    "against (the alignment-only iterations score the own "
                                    "class only). Scoring costs ~M/K of the full "
                                    "search; 0: all K. Measured with the invariant encoder "
                                    "(hand map, 2,000 particles, K=10, seed 0): ACC 0.7205 "
                                    "vs 0.721 with all K at SNR 0.1, 0.607 vs 0.611 at SNR "
                                    "0.03, in 40-75 %% less EM time")
    refine_first_search_classes: int = _f(10, "classes each particle is scored against "
                                          "in the first EM iteration, when no fine score "
                                          "of the other classes exists yet: its own and "
                                          "the first by --refine-prescreen-box; later "
                                          "iterations choose among the classes scored so "
                                          "far. 0: all K (the first EM iteration unpruned, "
                                          "as before). Only with --refine-search-classes > "
                                          "0. Measured (hand map, 4,000 particles, SNR 0.1, "
                                          "seed 3), ACC of the full search / this: K=20 "
                                          "0.671 / 0.670 (5: 0.627; all K first, then 3: "
                                          "0.6545); K=10 5: 0.7925 vs 0.793")
    refine_prescreen_box: int = _f(16, "the first EM iteration's candidate classes are "
                                   "ranked by a coarse search of every class at this box "
                                   "in px (Fourier crop of the working box; costs ~(box / "
                                   "working box)^3 of a full iteration). 0: ranked by the "
                                   "clustering probabilities, which missed too many "
                                   "(4,000 particles, K=20, 5 candidates: ACC 0.574 vs "
                                   "0.627 with the coarse search)")
    refine_subset: int = _f(20000, "particles the EM iterations before the last "
                            "--refine-full-iterations score: a random subset of this many "
                            "(drawn with --seed) builds the averages, as cryoSPARC's batches "
                            "do; then every particle is scored. 0 (or at least the number "
                            "of particles): all in every iteration. Bounds the EM's cost "
                            "at 10^5-10^6 particles; runs of up to this many particles are "
                            "unchanged. Measured (simulated phantom, uniform views, 15 %% "
                            "junk, SNR 0.05, K=100, 2 idle cores): 10^5 particles classified "
                            "in 2,290 s, the EM 1,769 s; 10^4 particles with a subset of "
                            "5,000 against all: oracle-selection recall 0.999 / 0.998, "
                            "contamination 0.022 / 0.025, EM 317 / 426 s")
    refine_full_iterations: int = _f(2, "last EM iterations that score every particle when "
                                     "--refine-subset is in effect (at least 1)")
    refine_mask_scale: float = _f(1.0, "the EM's mask radius and crop window, times the "
                                  "particle radius; above 1 the EM runs on a second, wider "
                                  "cache at the same pixel size (refine_cache.f32), the "
                                  "contrastive stages keep theirs (a wider mask there cost "
                                  "them: ACC before the EM 0.700 -> 0.233). Measured with a "
                                  "prototype at 1.67 (hand map, 2,000 particles, K=10, "
                                  "1 thread, loaded machine): ACC 0.727 -> 0.763 and 0.562 "
                                  "-> 0.658 at SNR 0.1 (seeds 0, 1), 0.610 -> 0.621 at SNR "
                                  "0.03, phantom 1.000 both; wall 2.8-4x (the EM on 48 "
                                  "instead of 30 px)")
    refine_shift: float = _f(0.15, "largest shift searched, fraction of the working box")
    refine_temperature: float = _f(1.0, "softness of the class posteriors (1: Gaussian white "
                                   "noise model; larger: softer)")
    refine_ctf_epsilon: float = _f(0.1, "with --refine-ctf: Wiener regulariser of the averages, "
                                   "fraction of the mean CTF^2")
    refine_min_posterior: float = _f(1e-4, "particle-class posteriors below this are left out "
                                     "of the averages (saves ~(K-1)/K of the M-step)")
    # --- class averages (simcryo.align: CTF-aware Wiener averages at the input box)
    average_iterations: int = _f(3, "iterations of the class aligner that gives the poses "
                                 "when the refinement stage is off (--refine-iterations 0)")
    average_box: int = _f(64, "largest search box of that class aligner, px (Fourier crop)")
    average_filter: str = _f("halves", "Wiener filter of the final averages: 'halves' each "
                             "class's own half-set FRC, the solvent masked first (the filter "
                             "of `simcryo align`); 'data' the spectral SNR measured on the "
                             "particles (as RELION's tau^2), scaled by each class's size, "
                             "then the solvent mask ('halves' with --no-wiener). 'data' "
                             "restores the low frequencies the CTF damps: on "
                             "benchmarks/realistic.py (seeds 0-2, means) it raised the "
                             "fidelity of the built-in phantom's kept classes from 0.904 to "
                             "0.946 and lowered the hand map's from 0.968 to 0.964, but let "
                             "junk classes through the automatic selection (contamination "
                             "0.029 -> 0.044 and 0.012 -> 0.019)",
                             choices=("halves", "data"))
    sort_classes: bool = _f(True, "number the classes best first by the quality score of "
                            "`simcryo select` (contrast, centring, radial profile and size "
                            "of each average, consistency of its members with it at their "
                            "poses; ties: larger first); run.json class_scores holds the "
                            "scores in the written order")
    # --- run
    seed: int = _f(0, "random seed (results are reproducible for a given seed and device)")
    device: str = _f("cpu", "torch device: cpu or cuda:N")
    threads: int = _f(2, "CPU threads for torch (0: torch default)")

    def validate(self):
        if not self.o:
            raise SimcryoError("no output folder: give --o DIR")
        if not self.i:
            raise SimcryoError("no input: give --i particles.star or --i stack.mrcs")
        if self.K < 2:
            raise SimcryoError(f"--K must be at least 2 (got {self.K})")
        if self.pretext_box and self.pretext_box < 16:
            raise SimcryoError(f"--pretext-box must be 0 or at least 16 px (got {self.pretext_box})")
        if self.working_box < 16:
            raise SimcryoError(f"--working-box must be at least 16 px (got {self.working_box})")
        if self.working_box % 2:
            raise SimcryoError(f"--working-box must be even (got {self.working_box})")
        if not 0.0 < self.confidence < 1.0:
            raise SimcryoError(f"--confidence must be in (0, 1) (got {self.confidence})")
        for name in ("pretext_epochs", "scan_epochs", "selflabel_epochs", "tta_rotations",
                     "knn", "scan_heads", "batch_size", "width"):
            if getattr(self, name) < (0 if name in ("selflabel_epochs", "pretext_epochs") else 1):
                raise SimcryoError(f"--{name.replace('_', '-')} must be positive")
        for name in ("invariant_angular", "invariant_dim", "invariant_candidates"):
            if getattr(self, name) < 1:
                raise SimcryoError(f"--{name.replace('_', '-')} must be positive")
        if self.refine_subset < 0:
            raise SimcryoError(f"--refine-subset must be 0 or positive (got {self.refine_subset})")
        if self.refine_full_iterations < 1:
            raise SimcryoError(f"--refine-full-iterations must be at least 1 (got "
                               f"{self.refine_full_iterations})")
        if self.refine_mask_scale < 1:
            raise SimcryoError(f"--refine-mask-scale must be at least 1 (got "
                               f"{self.refine_mask_scale})")
        if self.scale_min <= 0 or self.scale_max < self.scale_min:
            raise SimcryoError("need 0 < --scale-min <= --scale-max")
        return self
