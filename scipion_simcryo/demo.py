"""End-to-end demo through real Scipion protocols in a headless project.

    python -m scipion_simcryo.demo --o demo_output

Two parts (``--part``), both by default:

- discrete: simulate K clean view classes of the built-in phantom -> 2D classification ->
  align/average -> evaluate against the true labels; prints the metrics table and writes
  PNGs: the class averages next to the true projection of the view class each one matched,
  the training curves and the metrics.
- realistic (the facility's job, cleaning): simulate picks of the phantom with views uniform
  over the sphere, 15 % junk (empty boxes, ice/aggregate blobs, off-centre picks), coloured
  noise, per-image contrast and CTF -> 2D classification -> rank and select the classes ->
  evaluate: good-particle recall, contamination (junk share of what is kept), junk rejected,
  view spread and its floor, class-average fidelity, for the oracle selection (classes with
  < 50 % junk) and the automatic one; writes the kept and rejected classes as a PNG gallery.

Engine commands that are not in this checkout are skipped and reported as such. With RELION
installed (relion_refine on the PATH and scipion-em-relion importable), RELION 2D (25
iterations, same K, same threads) also runs on the same particles in the same project and is
scored (and, in the realistic part, ranked and selected) the same way (``--relion no`` skips
it). Each step's measured wall time is printed.

Everything (Scipion project, logs, PNGs, metrics.json) goes under --o.
"""
import argparse
import importlib.util
import json
import os
import shutil
import sys
import time

from scipion_simcryo.engine_config import engineDefault
from scipion_simcryo.headless import registerPluginEntryPoint, setupHeadlessScipion


def engineHas(command):
    return importlib.util.find_spec('simcryo.commands.%s' % command) is not None


# ----------------------------------------------------------------------------- demo steps
class Demo:
    def __init__(self, args):
        self.args = args
        self.out = os.path.abspath(args.o)
        self.log = []
        self.results = {}
        self.pictures = []

    def say(self, msg):
        print(msg, flush=True)
        self.log.append(msg)

    def launch(self, prot, what):
        t0 = time.time()
        self.say('\n== %s (%s) ...' % (what, prot.getClassName()))
        self.project.launchProtocol(prot, wait=True)
        prot = self.project.getProtocol(prot.getObjId())
        dt = time.time() - t0
        if not prot.isFinished():
            self.say('   FAILED after %.0f s; log: %s' % (dt, prot.getStdoutLog()))
            for line in prot.getLogsLastLines(15):
                self.say('   | ' + line)
            raise SystemExit(1)
        self.say('   done in %.0f s: %s' % (dt, prot.getWorkingDir()))
        self.results.setdefault('timings_s', {})[what] = round(dt, 1)
        return prot

    def save(self, fig, name, **kwargs):
        fn = os.path.join(self.out, name)
        fig.savefig(fn, **kwargs)
        return fn

    def skip(self, what, command):
        self.say('\n== %s: SKIPPED (engine command `simcryo %s` not in this checkout)'
                 % (what, command))
        self.results.setdefault('skipped', []).append(what)

    def run(self):
        from pyworkflow.project import Manager
        name = 'simcryo_demo'
        manager = Manager()
        if manager.hasProject(name):
            manager.deleteProject(name)
        self.project = manager.createProject(name)
        os.chdir(self.project.getPath())  # Scipion resolves run paths from the project folder
        self.say('Scipion project: %s' % self.project.getPath())
        if not engineHas('simulate'):
            self.skip('simulate', 'simulate')
            return 1
        t0 = time.time()
        if self.args.part in ('both', 'discrete'):
            self.runDiscrete()
        if self.args.part in ('both', 'realistic'):
            self.runRealistic()
        self.finish(time.time() - t0)
        return 0

    def runDiscrete(self):
        from scipion_simcryo.protocols import (ProtSimcryoSimulate, ProtSimcryoClassify2D,
                                               ProtSimcryoAlignAverage, ProtSimcryoEvaluate)
        a = self.args
        threads = a.threads
        sim = self.project.newProtocol(
            ProtSimcryoSimulate, objLabel='simulate phantom', numberOfClasses=a.classes,
            particlesPerClass=a.per_class, snr=a.snr, seed=a.seed, numberOfThreads=threads)
        sim = self.launch(sim, 'simulate %d view classes x %d particles, SNR %g, CTF on'
                          % (a.classes, a.per_class, a.snr))
        parts = sim.outputParticles
        self.say('   %d particles, %d px, %.2f Å/px' % (parts.getSize(), parts.getXDim(),
                                                        parts.getSamplingRate()))
        scored = []  # (label, classes output)

        cls2d = None
        if engineHas('classify'):
            values = dict(pretextEpochs=a.epochs) if a.epochs else {}
            cls2d = self.project.newProtocol(
                ProtSimcryoClassify2D, objLabel='simcryo classify', inputParticles=parts,
                numberOfClasses=a.classes, useGpu=False, numberOfThreads=threads,
                seed=a.seed, **values)
            cls2d = self.launch(cls2d, 'classify (contrastive features + SCAN)')
            scored.append(('simcryo classify', cls2d))
        else:
            self.skip('classify', 'classify')

        ali = None
        if cls2d is not None and engineHas('align'):
            ali = self.project.newProtocol(
                ProtSimcryoAlignAverage, objLabel='simcryo align/average',
                inputClasses=cls2d.outputClasses, useGpu=False, numberOfThreads=threads,
                seed=a.seed)
            ali = self.launch(ali, 'align and average inside the classes')
            scored.append(('simcryo classify + align', ali))
        elif cls2d is not None:
            self.skip('align/average', 'align')

        if a.relion != 'no':
            rel = self.runRelion(parts, a.classes, required=a.relion == 'yes')
            if rel is not None:
                scored.append(('RELION 2D', rel))

        tables = []
        if not engineHas('evaluate'):
            self.skip('evaluate', 'evaluate')
        else:
            for label, prot in scored:
                ev = self.project.newProtocol(
                    ProtSimcryoEvaluate, objLabel='evaluate %s' % label,
                    inputClasses=prot.outputClasses, trueReferences=sim.outputReferences)
                ev = self.launch(ev, 'evaluate %s against the true labels' % label)
                tables.append((label, ev))
        self.report(sim, scored, tables)

    # ------------------------------------------------------------------ realistic part
    def runRealistic(self):
        """Uniform views, junk, coloured noise, CTF -> classify -> select -> evaluate, for
        simcryo and (when installed) RELION; the cleaning figures side by side."""
        from pwem.protocols import ProtImportVolumes
        from scipion_simcryo.protocols import (ProtSimcryoSimulate, ProtSimcryoClassify2D,
                                               ProtSimcryoSelectClasses, ProtSimcryoEvaluate)
        from scipion_simcryo.protocols import protocol_simulate as simulate
        a = self.args
        good = int(round(a.real_particles * (1 - a.junk)))
        sim = self.project.newProtocol(
            ProtSimcryoSimulate, objLabel='simulate realistic picks',
            views=simulate.VIEWS_UNIFORM, numberOfClasses=a.real_classes,
            numberOfParticles=good, junkFraction=a.junk, junkKinds='empty,blob,offcentre',
            contrastSigma=0.3, noiseMode=simulate.NOISE_COLOURED, snr=a.real_snr,
            seed=a.seed, numberOfThreads=a.threads)
        sim = self.launch(sim, 'simulate %d realistic picks: uniform views, %g junk (empty, '
                               'blob, offcentre), coloured noise at SNR %g, contrast spread, '
                               'CTF' % (a.real_particles, a.junk, a.real_snr))
        parts = sim.outputParticles
        self.say('   %d particles, %d px, %.2f Å/px' % (parts.getSize(), parts.getXDim(),
                                                        parts.getSamplingRate()))
        if not all(engineHas(c) for c in ('classify', 'select', 'evaluate')):
            for c in ('classify', 'select', 'evaluate'):
                if not engineHas(c):
                    self.skip('realistic %s' % c, c)
            return
        volume = self.launch(self.project.newProtocol(
            ProtImportVolumes, objLabel='import the true volume',
            filesPath=os.path.abspath(sim._getExtraPath('output', 'volume.mrc')),
            samplingRate=parts.getSamplingRate()), 'import the true volume (for the '
                                                   'fidelity)').outputVolume
        values = dict(pretextEpochs=a.epochs) if a.epochs else {}
        classifiers = [('simcryo', self.launch(self.project.newProtocol(
            ProtSimcryoClassify2D, objLabel='simcryo classify realistic', inputParticles=parts,
            numberOfClasses=a.real_classes, useGpu=False, numberOfThreads=a.threads,
            seed=a.seed, **values), 'classify the realistic picks, K = %d' % a.real_classes))]
        if a.relion != 'no':
            rel = self.runRelion(parts, a.real_classes, required=a.relion == 'yes',
                                 label='realistic ')
            if rel is not None:
                classifiers.append(('RELION 2D', rel))
        runs = []   # (label, select protocol, evaluate protocol)
        for label, prot in classifiers:
            sel = self.launch(self.project.newProtocol(
                ProtSimcryoSelectClasses, objLabel='select %s classes' % label,
                inputClasses=prot.outputClasses, numberOfThreads=1),
                'rank and select the %s classes' % label)
            selected = getattr(sel, 'outputClasses', None)
            if selected is None:
                self.say('   no class reached the threshold: the automatic selection is empty')
            ev = self.launch(self.project.newProtocol(
                ProtSimcryoEvaluate, objLabel='evaluate %s cleaning' % label,
                inputClasses=prot.outputClasses, selectedClasses=selected,
                trueVolume=volume, numberOfThreads=a.threads),
                'evaluate the %s cleaning (oracle and automatic selection)' % label)
            runs.append((label, sel, ev))
        self.reportCleaning(runs)

    def reportCleaning(self, runs):
        from scipion_simcryo.metrics import formatValue
        from scipion_simcryo.viewers.viewers import SimcryoSelectViewer
        os.makedirs(self.out, exist_ok=True)
        columns, tables = [], {}
        for label, _, ev in runs:
            for i, which in enumerate(('oracle', 'automatic')):
                columns.append('%s %s' % (label, which))
                tables[columns[-1]] = {row[0]: row[1 + i] for row in ev.getCleaningTable()}
        figures = [row[0] for row in runs[0][2].getCleaningTable()]
        width = max(len(f) for f in figures)
        self.say('\n' + '=' * 72)
        self.say('Cleaning figures (realistic picks; oracle: classes with < 50 % junk; '
                 'automatic: rank and select 2D classes, default threshold):')
        self.say('%-*s  %s' % (width, 'figure', '  '.join('%18s' % c for c in columns)))
        for f in figures:
            self.say('%-*s  %s' % (width, f, '  '.join(
                '%18s' % ('-' if tables[c].get(f) is None else formatValue(tables[c][f], f))
                for c in columns)))
        self.results['cleaning'] = tables
        for label, sel, _ in runs:
            viewer = SimcryoSelectViewer(project=self.project, protocol=sel)
            viewer.setProtocol(sel)
            view = viewer._showRanked()[0]
            if hasattr(view, 'getFigure'):   # a message when the selection has no scores
                self.pictures.append(self.save(view.getFigure(), 'kept_rejected_%s.png'
                                               % _slug(label), dpi=110))

    def runRelion(self, parts, classes, required=False, label=''):
        reason = None
        if shutil.which('relion_refine') is None:
            reason = 'relion_refine not on the PATH'
        else:
            try:
                from relion.protocols import ProtRelionClassify2D
            except Exception as exc:
                reason = 'scipion-em-relion not importable: %s' % exc
        if reason:
            self.say('\n== RELION 2D: SKIPPED (%s)' % reason)
            if required:
                raise SystemExit(1)
            return None
        apix = parts.getSamplingRate()
        prot = self.project.newProtocol(
            ProtRelionClassify2D, objLabel='relion 2D %s' % label, inputParticles=parts,
            numberOfClasses=classes, numberOfIterations=self.args.relion_iter,
            maskDiameterA=int(0.9 * parts.getXDim() * apix), doCTF=True,
            useGradientAlg=False, doGpu=False, numberOfMpi=1,
            numberOfThreads=self.args.threads, extraParams='--random_seed %d' % self.args.seed)
        return self.launch(prot, 'RELION 2D %sclassification (%d iterations)'
                           % (label, self.args.relion_iter))

    # ------------------------------------------------------------------------- report
    def report(self, sim, scored, tables):
        from scipion_simcryo.metrics import formatValue
        from scipion_simcryo.viewers import plots
        from scipion_simcryo.viewers.viewers import matchedGalleryData, readImages, runCurves
        os.makedirs(self.out, exist_ok=True)
        refs = readImages(item.clone() for item in sim.outputReferences.iterItems(orderBy='id'))
        metrics = {}
        self.say('\n' + '=' * 72)
        for label, ev in tables:
            rows = ev.getMetricsTable()
            metrics[label] = dict(rows)
            self.say(plots.formatMetricsTable(rows, '\nMetrics: %s (vs true labels)' % label))
        if len(tables) > 1:
            names = [label for label, _ in tables]
            keys = [k for k, _ in tables[0][1].getMetricsTable()]
            width = max(len(k) for k in keys)
            self.say('\nSide by side:')
            self.say('%-*s  %s' % (width, 'metric', '  '.join('%24s' % n for n in names)))
            for k in keys:
                self.say('%-*s  %s' % (width, k, '  '.join(
                    '%24s' % (formatValue(metrics[n][k], k) if k in metrics[n] else '-')
                    for n in names)))
        pictures = []
        for label, prot in scored:
            ev = dict(tables).get(label)
            data = matchedGalleryData(ev, classes=prot.outputClasses,
                                      references=sim.outputReferences) if ev else None
            if data is not None:
                fig = plots.classGalleryFigure(
                    *data['args'], title='%s: class averages, largest first (top) and the '
                                         'true view each matched (bottom)' % label,
                    **data['kwargs'])
                pictures.append(self.save(fig, 'gallery_%s.png' % _slug(label), dpi=110))
            curves = runCurves(prot._readRunLog()) if hasattr(prot, '_readRunLog') else {}
            if curves:
                pictures.append(self.save(
                    plots.curvesFigure(curves, title='%s: training and refinement' % label),
                    'curves_%s.png' % _slug(label)))
        pictures.append(self.save(plots.classGalleryFigure(
            refs, [0] * len(refs), order=range(len(refs)),
            labels=['view %d' % k for k in range(1, len(refs) + 1)],
            title='True projection of each view class'), 'true_projections.png', dpi=110))
        for label, ev in tables:
            rows = [(name, formatValue(v, name)) for name, v in ev.getMetricsTable()]
            pictures.append(self.save(plots.tableFigure(['metric', 'value'], rows, label),
                                      'metrics_%s.png' % _slug(label)))
            confusion = (ev.getReport() or {}).get('confusion')
            if confusion:
                pictures.append(self.save(plots.confusionFigure(
                    confusion['counts'], confusion['predicted_classes'],
                    confusion['true_classes'], title='%s: confusion matrix' % label),
                    'confusion_%s.png' % _slug(label)))
        self.results.update(metrics=metrics)
        self.pictures += pictures

    def finish(self, seconds):
        self.results.update(pictures=self.pictures, project=self.project.getPath(),
                            args=vars(self.args), total_s=round(seconds, 1))
        with open(os.path.join(self.out, 'metrics.json'), 'w') as f:
            json.dump(self.results, f, indent=2)
        self.say('\nWall time per step (s):')
        for what, dt in self.results.get('timings_s', {}).items():
            self.say('  %7.1f  %s' % (dt, what))
        self.say('  %7.1f  total' % seconds)
        self.say('\nPictures:')
        for fn in self.pictures:
            self.say('  ' + fn)
        self.say('Metrics (JSON): %s' % os.path.join(self.out, 'metrics.json'))
        self.say('Scipion project (open it with the Scipion GUI): %s' % self.project.getPath())
        if self.results.get('skipped'):
            self.say('Skipped (engine commands missing): %s'
                     % ', '.join(self.results['skipped']))


def _slug(text):
    return ''.join(c if c.isalnum() else '_' for c in text).strip('_').lower()


def main(argv=None):
    p = argparse.ArgumentParser(prog='python -m scipion_simcryo.demo', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--o', default='demo_output', help='output folder (default: demo_output)')
    p.add_argument('--classes', type=int, default=6, help='view classes K (default: 6)')
    p.add_argument('--per-class', type=int, default=60,
                   help='particles per class (default: 60)')
    p.add_argument('--snr', type=float, default=0.1, help='SNR (default: 0.1)')
    p.add_argument('--epochs', type=int, default=15,
                   help='contrastive epochs of classify (default: 15, fewer than the engine '
                        'default of %d to keep the demo at a few minutes on 2 cores; 0: '
                        'engine default)' % engineDefault('classify', 'pretext_epochs'))
    p.add_argument('--part', choices=['both', 'discrete', 'realistic'], default='both',
                   help='discrete view classes, realistic picks (uniform views, junk), or '
                        'both (default: both)')
    p.add_argument('--real-particles', type=int, default=400,
                   help='realistic part: particles, junk included (default: 400)')
    p.add_argument('--real-classes', type=int, default=10,
                   help='realistic part: classes K (default: 10)')
    p.add_argument('--junk', type=float, default=0.15,
                   help='realistic part: junk fraction (default: 0.15)')
    p.add_argument('--real-snr', type=float, default=0.1,
                   help='realistic part: SNR (default: 0.1)')
    p.add_argument('--threads', type=int, default=2, help='CPU threads (default: 2)')
    p.add_argument('--seed', type=int, default=0, help='random seed (default: 0)')
    p.add_argument('--relion', choices=['auto', 'yes', 'no'], default='auto',
                   help='also run RELION 2D on the same particles in the same project and '
                        'score it the same way; auto: when relion_refine and '
                        'scipion-em-relion are installed (default: auto)')
    p.add_argument('--relion-iter', type=int, default=25,
                   help='RELION 2D iterations (default: 25)')
    args = p.parse_args(argv)
    out = os.path.abspath(args.o)
    os.makedirs(out, exist_ok=True)
    if os.environ.get('SIMCRYO_DEMO_HEADLESS') != out:
        # `python -m scipion_simcryo.demo` imports the plugin (hence pyworkflow, which reads
        # its configuration once) before this runs: set the headless environment and start
        # a fresh interpreter that sees it from the first import.
        setupHeadlessScipion(os.path.join(out, 'scipion'))
        os.environ['SIMCRYO_DEMO_HEADLESS'] = out
        argv = sys.argv[1:] if argv is None else list(argv)
        os.execv(sys.executable, [sys.executable, '-m', 'scipion_simcryo.demo'] + argv)
    registerPluginEntryPoint(os.path.join(out, 'scipion'))
    return Demo(args).run()


if __name__ == '__main__':
    sys.exit(main())
