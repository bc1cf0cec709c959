"""Driver of the GUI test (test_gui.py), run in its own processes with the headless Scipion
environment (pyworkflow reads it at import):

    python -m scipion_simcryo.tests.gui_driver build PROJECT
    python -m scipion_simcryo.tests.gui_driver drive PROJECT SHOTS_DIR     (needs DISPLAY)

`build` makes a small project with one run of every simcryo protocol (the protocol tests'
tiny data and fast engine settings; a second simulation with junk and its class selection).
`drive` opens, in the real Tk GUI on the display, each run's form (every section tab) and
each item of its viewer; every exception, Tk callback error, error/warning dialog or message
view is recorded; a screenshot (`import -window root`) is saved after each window and tab;
pwem's Qt metadata viewer windows (the data viewer without Xmipp) are checked to start and
stay up. It prints one JSON line ``RESULT {...}`` and exits 1 when anything failed.
"""
import json
import os
import subprocess
import sys
import time
import traceback

PROTOCOL_ORDER = ['ProtSimcryoSimulate', 'ProtSimcryoDenoise', 'ProtSimcryoClassify2D',
                  'ProtSimcryoSelectClasses', 'ProtSimcryoAlignAverage', 'ProtSimcryoEvaluate']


# ----------------------------------------------------------------------------- build
def build(projectName):
    from pyworkflow.project import Manager
    from scipion_simcryo.protocols import (ProtSimcryoSimulate, ProtSimcryoDenoise,
                                           ProtSimcryoClassify2D, ProtSimcryoAlignAverage,
                                           ProtSimcryoEvaluate, ProtSimcryoSelectClasses)
    from scipion_simcryo.tests.common import fastArgs, K, PER_CLASS, BOX
    manager = Manager()
    if manager.hasProject(projectName):
        manager.deleteProject(projectName)
    project = manager.createProject(projectName)
    os.chdir(project.getPath())

    def run(protClass, label, **kwargs):
        prot = project.newProtocol(protClass, objLabel=label, **kwargs)
        project.launchProtocol(prot, wait=True)
        prot = project.getProtocol(prot.getObjId())
        if not prot.isFinished():
            raise SystemExit('%s failed: %s' % (label, '\n'.join(prot.getLogsLastLines(20))))
        return prot

    cpu = dict(useGpu=False, numberOfThreads=2)
    sim = run(ProtSimcryoSimulate, 'simulate', numberOfClasses=K, particlesPerClass=PER_CLASS,
              boxSize=BOX, snr=2.0, seed=1, numberOfThreads=2)
    run(ProtSimcryoDenoise, 'denoise', inputParticles=sim.outputParticles,
        extraParams=fastArgs('denoise'), **cpu)
    cls2d = run(ProtSimcryoClassify2D, 'classify', inputParticles=sim.outputParticles,
                numberOfClasses=K, extraParams=fastArgs('classify'), **cpu)
    run(ProtSimcryoSelectClasses, 'select', inputClasses=cls2d.outputClasses,
        numberOfThreads=1)
    ali = run(ProtSimcryoAlignAverage, 'align', inputClasses=cls2d.outputClasses,
              extraParams=fastArgs('align'), **cpu)
    for label, prot in [('evaluate classify', cls2d), ('evaluate align', ali)]:
        run(ProtSimcryoEvaluate, label, inputClasses=prot.outputClasses,
            trueReferences=sim.outputReferences)
    # Junk picks, grouped by their true kind, so that the selection viewer shows rejected
    # classes next to kept ones.
    from scipion_simcryo.tests.common import addClassesOutput
    from scipion_simcryo.tests.test_protocols_select import truthClassOf, writeClassMeans
    junk = run(ProtSimcryoSimulate, 'simulate junk', numberOfClasses=K,
               particlesPerClass=PER_CLASS, boxSize=BOX, snr=0.5, junkFraction=0.25,
               junkKinds='empty,blob,offcentre', contrastSigma=0.2, seed=1, numberOfThreads=2)
    means = writeClassMeans(junk.outputParticles, truthClassOf,
                            os.path.abspath(junk._getExtraPath('truth_means.mrcs')))
    classes = addClassesOutput(junk, junk.outputParticles, truthClassOf, 'truthClasses',
                               representatives=means)
    select = run(ProtSimcryoSelectClasses, 'select junk', inputClasses=classes,
                 numberOfThreads=1)
    # ... and their evaluation with the selection and the true volume: the cleaning items.
    from pwem.protocols import ProtImportVolumes
    volume = run(ProtImportVolumes, 'import phantom', samplingRate=junk.outputParticles.
                 getSamplingRate(), filesPath=os.path.abspath(
                     junk._getExtraPath('output', 'volume.mrc'))).outputVolume
    run(ProtSimcryoEvaluate, 'evaluate junk', inputClasses=classes,
        trueReferences=junk.outputReferences, selectedClasses=select.outputClasses,
        trueVolume=volume)
    print('PROJECT %s' % project.getPath())


# ----------------------------------------------------------------------------- drive
class Recorder:
    """Everything that went wrong, and the screenshots taken."""

    def __init__(self, shots):
        self.shots, self.errors, self.messages, self.pictures = shots, [], [], []
        self.qtViewers, self.qtCount = [], 0

    def error(self, where, text):
        self.errors.append('%s: %s' % (where, text))
        print('ERROR %s: %s' % (where, text), flush=True)

    def screenshot(self, name):
        fn = os.path.join(self.shots, '%02d_%s.png' % (len(self.pictures) + 1, _slug(name)))
        subprocess.run(['import', '-window', 'root', fn], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if os.path.exists(fn):
            self.pictures.append(fn)


def _slug(text):
    return ''.join(c if c.isalnum() else '_' for c in text).strip('_').lower()[:60]


def _patchDialogs(rec):
    """Error/warning dialogs and message views are recorded instead of blocking."""
    import pyworkflow.gui.dialog as dialog
    import pyworkflow.gui.gui as gui
    import pyworkflow.viewer as pwviewer

    def failing(kind):
        def show(*args, **kwargs):
            rec.error('%s dialog' % kind, ' | '.join(str(a) for a in args[:2]))
        return show
    for name in ('showError', 'showWarning'):
        setattr(dialog, name, failing(name))
    dialog.showInfo = lambda *a, **k: rec.messages.append(' | '.join(map(str, a[:2])))
    gui.Window.showError = lambda self, msg, header='Error', **k: rec.error(header, msg)
    gui.Window.showWarning = lambda self, msg, header='Warning', **k: rec.error(header, msg)
    gui.Window.showInfo = lambda self, msg, header='Info', **k: rec.messages.append(msg)

    def messageShow(view):
        rec.error('message view', view.getMessage())
    pwviewer.MessageView.show = messageShow


def _patchQtViewer(rec):
    """pwem's metadata viewer is a separate Qt process: keep it, with its output, to check
    that it starts and stays up."""
    import pwem.viewers.mdviewer.viewer as mdviewer
    real = subprocess.Popen

    def popen(args, **kwargs):
        rec.qtCount += 1
        log = open(os.path.join(rec.shots, 'qtviewer_%02d.log' % rec.qtCount), 'w+')
        proc = real(args, stdout=log, stderr=subprocess.STDOUT)
        rec.qtViewers.append((proc, log))
        return proc
    mdviewer.subprocess = type('subprocess', (), {'Popen': staticmethod(popen)})


def _pump(root, seconds):
    """Process the events of our Tk windows and of matplotlib's (its own Tk interpreter)."""
    import matplotlib.pyplot as plt
    end = time.time() + seconds
    while time.time() < end:
        root.update()
        if plt.get_fignums():
            plt.pause(0.05)
        else:
            time.sleep(0.05)


def _closeWindows(root):
    import matplotlib.pyplot as plt
    plt.close('all')
    for w in root.winfo_children():
        try:
            w.destroy()
        except Exception:
            pass
    root.update()


def _checkQtViewers(rec, where, root):
    if not rec.qtViewers:
        return
    _pump(root, 6.0)   # the Qt viewer needs a few seconds to show its window
    rec.screenshot(where + ' qt viewer')
    for proc, log in rec.qtViewers:
        log.flush()
        log.seek(0)
        text = log.read()
        if proc.poll() is not None and proc.returncode != 0:
            rec.error(where, 'Qt data viewer exited with %s: %s' % (proc.returncode,
                                                                   text[-1500:]))
        elif 'Traceback' in text:
            rec.error(where, 'Qt data viewer: %s' % text[-1500:])
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)
        log.close()
    rec.qtViewers = []


def drive(projectName, shots):
    import tkinter as tk
    import matplotlib
    matplotlib.use('TkAgg')
    from pyworkflow.project import Manager
    import pyworkflow.gui.project  # noqa: F401 (imports pyworkflow.gui.form without a cycle)
    from pyworkflow.gui.form import FormWindow
    from pyworkflow.gui.plotter import Plotter
    Plotter.setBackend('TkAgg')   # as the project window does
    from pyworkflow.viewer import DESKTOP_TKINTER
    from pwem import Domain
    os.makedirs(shots, exist_ok=True)
    rec = Recorder(shots)
    _patchDialogs(rec)
    _patchQtViewer(rec)
    project = Manager().loadProject(projectName)
    os.chdir(project.getPath())
    root = tk.Tk()
    root.withdraw()
    root.report_callback_exception = lambda exc, val, tb: rec.error(
        'Tk callback', ''.join(traceback.format_exception(exc, val, tb))[-2000:])
    prots = sorted(project.getRuns(), key=lambda p: (
        PROTOCOL_ORDER.index(p.getClassName()) if p.getClassName() in PROTOCOL_ORDER else 99,
        p.getObjId()))
    opened = []
    for prot in prots:
        if not prot.getClassName().startswith('ProtSimcryo'):
            continue
        name = prot.getRunName()
        try:   # the protocol's form, as "Edit" opens it
            form = FormWindow('Protocol Run: ' + prot.getClassLabel(), prot,
                              lambda *a, **k: None, master=None)
            form.root.deiconify()
            _pump(root, 1.0)
            rec.screenshot('form ' + name)
            _screenshotSections(form, name, root, rec)
            opened.append('form ' + name)
            form.root.destroy()
        except Exception:
            rec.error('form ' + name, traceback.format_exc()[-2000:])
        for viewerClass in Domain.findViewers(prot.getClassName(), DESKTOP_TKINTER):
            if not viewerClass.__module__.startswith('scipion_simcryo'):
                continue
            _driveViewer(viewerClass, prot, project, root, rec, opened)
        _closeWindows(root)
    print('RESULT ' + json.dumps({'errors': rec.errors, 'messages': rec.messages,
                                  'opened': opened, 'screenshots': rec.pictures}), flush=True)
    return 1 if rec.errors else 0


def _screenshotSections(form, name, root, rec):
    """Every further tab of the form (the first is already shown), so that each section's
    parameters are seen."""
    for frame in getattr(form, '_sections', [])[1:]:
        frame.master.select(frame)
        _pump(root, 0.5)
        rec.screenshot('form %s %s' % (name, frame.section.getLabel()))


def _driveViewer(viewerClass, prot, project, root, rec, opened):
    from pyworkflow.gui.form import FormWindow
    where = '%s of %s' % (viewerClass.__name__, prot.getRunName())
    try:
        viewer = viewerClass(project=project, protocol=prot)
        viewer.setProtocol(prot)
        # ProtocolViewer.visualize without entering Tk's main loop
        viewer.formWindow = FormWindow('Protocol Viewer: ' + viewer.getClassName(), viewer,
                                       viewer._viewAll, None, visualizeMode=True,
                                       visualizeDict=viewer._ProtocolViewer__getVisualizeWrapperDict())
        viewer.showInfo = viewer.formWindow.showInfo
        viewer.showError = viewer.formWindow.showError
        viewer._tkRoot = viewer.formWindow.root
        viewer.formWindow.root.deiconify()
        _pump(root, 1.0)
        rec.screenshot('viewer ' + where)
        items = list(viewer._getVisualizeDict())
    except Exception:
        rec.error(where, traceback.format_exc()[-2000:])
        return
    for item in items:
        label = viewer.getParam(item).label.get()
        try:
            viewer._visualizeParam(item)
            _pump(root, 1.5)
            rec.screenshot('%s %s' % (prot.getRunName(), item))
            opened.append('%s: %s' % (where, label))
            _checkQtViewers(rec, '%s: %s' % (where, label), root)
        except Exception:
            rec.error('%s: %s' % (where, label), traceback.format_exc()[-2000:])
        _closeViewerWindows(viewer, root)
    try:
        viewer.formWindow.root.destroy()
    except Exception:
        pass


def _closeViewerWindows(viewer, root):
    import matplotlib.pyplot as plt
    plt.close('all')
    keep = {str(viewer.formWindow.root)}
    for w in root.winfo_children():
        if str(w) not in keep:
            try:
                w.destroy()
            except Exception:
                pass
    root.update()


def main(argv):
    command, projectName = argv[0], argv[1]
    if command == 'build':
        build(projectName)
        return 0
    return drive(projectName, argv[2])


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
