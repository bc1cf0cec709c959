"""End-to-end demo through real Scipion protocols in a headless project.

    python -m scipion_simcryo.demo --o demo_output

simulate (built-in phantom) -> 2D classification -> align/average -> evaluate, then prints the
metrics table and writes PNGs: the class averages next to the true projections of the view
class each one matched, the training curves and the metrics. Engine commands that are not in
this checkout are skipped and reported as such. With RELION installed (relion_refine on the
PATH and scipion-em-relion importable), RELION 2D (25 iterations, same K, same threads) also
runs on the same particles in the same project and is scored the same way (``--relion no``
skips it).

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
        from scipion_simcryo.protocols import (ProtSimcryoSimulate, ProtSimcryoClassify2D,
                                               ProtSimcryoAlignAverage, ProtSimcryoEvaluate)
        a = self.args
        name = 'simcryo_demo'
        manager = Manager()
        if manager.hasProject(name):
            manager.deleteProject(name)
        self.project = manager.createProject(name)
        os.chdir(self.project.getPath())  # Scipion resolves run paths from the project folder
        self.say('Scipion project: %s' % self.project.getPath())
        threads = a.threads

        if not engineHas('simulate'):
            self.skip('simulate', 'simulate')
            return 1
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
            rel = self.runRelion(parts, required=a.relion == 'yes')
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
        return 0

    def runRelion(self, parts, required=False):
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
            ProtRelionClassify2D, objLabel='relion 2D', inputParticles=parts,
            numberOfClasses=self.args.classes, numberOfIterations=self.args.relion_iter,
            maskDiameterA=int(0.9 * parts.getXDim() * apix), doCTF=True,
            useGradientAlg=False, doGpu=False, numberOfMpi=1,
            numberOfThreads=self.args.threads, extraParams='--random_seed %d' % self.args.seed)
        return self.launch(prot, 'RELION 2D classification (%d iterations)'
                           % self.args.relion_iter)

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
        self.results.update(metrics=metrics, pictures=pictures,
                            project=self.project.getPath(), args=vars(self.args))
        with open(os.path.join(self.out, 'metrics.json'), 'w') as f:
            json.dump(self.results, f, indent=2)
        self.say('\nPictures:')
        for fn in pictures:
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
