"""The protocols through Scipion's queue submission (hosts.conf NAME / SUBMIT_COMMAND /
CHECK_COMMAND / SUBMIT_TEMPLATE / QUEUES), with a fake SLURM whose ``sbatch`` runs the job
script on this machine in the background: the whole protocol as one job, and each engine
run as its own job (QUEUE_FOR_JOBS = Y)."""
import os
import stat
import tempfile
import time

import pytest

from pyworkflow.project import Manager

from scipion_simcryo.protocols import ProtSimcryoAlignAverage
from scipion_simcryo.tests.common import SimcryoTestBase, engineHas, fastArgs, K, N
from scipion_simcryo.tests.truth_input import simulateTruthClasses

pytestmark = pytest.mark.skipif(not (engineHas('simulate') and engineHas('align')),
                                reason='engine commands `simcryo simulate/align` not available')

QUEUE = 'gpu'          # the partition of the test hosts.conf
MEMORY_MB = '2048'     # the JOB_MEMORY queue parameter (default of the dialog)
JOB_TIMEOUT_S = 900    # a job still active by then fails the test

# sbatch: keep the script, run it detached (stdout/stderr to the -o/-e of its #SBATCH
# lines, never to sbatch's pipe, which Scipion reads until it closes), state RUNNING ->
# COMPLETED/FAILED <exit status>; print the job id as SLURM does.
SBATCH = r'''#!/bin/bash
set -e
here="$(cd "$(dirname "$0")" && pwd)"
script="$1"
id=$$
out=$(sed -n 's/^#SBATCH -o //p' "$script")
err=$(sed -n 's/^#SBATCH -e //p' "$script")
echo RUNNING > "$here/$id.state"
echo "$id $script" >> "$here/submitted"
setsid bash -c 'bash "$1" > "$2" 2> "$3"; rc=$?
if [ $rc -eq 0 ]; then s=COMPLETED; else s=FAILED; fi
echo "$s $rc" > "$4"' job "$script" "$out" "$err" "$here/$id.state" \
    < /dev/null > /dev/null 2>&1 &
echo $! > "$here/$id.pid"
echo "Submitted batch job $id"
'''
# squeue/sacct in one: the job's state (nothing once unknown, which Scipion reads as done)
SQUEUE = '''#!/bin/bash
cat "$(dirname "$0")/$1.state" 2>/dev/null || true
'''
# scancel: the job's process group (setsid made the job its leader)
SCANCEL = '''#!/bin/bash
kill -TERM -- -"$(cat "$(dirname "$0")/$1.pid")"
'''

HOSTS = '''[localhost]
PARALLEL_COMMAND = mpirun -np %_(JOB_NODES)d --map-by node %_(COMMAND)s
NAME = SLURM
MANDATORY = 0
SUBMIT_COMMAND = {queue}/sbatch %_(JOB_SCRIPT)s
CHECK_COMMAND = {queue}/squeue %_(JOB_ID)s
CANCEL_COMMAND = {queue}/scancel %_(JOB_ID)s
JOB_DONE_REGEX = COMPLETED|FAILED
SUBMIT_TEMPLATE = #!/bin/bash
    #SBATCH -J %_(JOB_NAME)s
    #SBATCH -p %_(JOB_QUEUE)s
    #SBATCH -o %_(JOB_LOGS)s.out
    #SBATCH -e %_(JOB_LOGS)s.err
    #SBATCH --ntasks=1 --cpus-per-task=%_(JOB_THREADS)d
    #SBATCH --mem=%_(JOB_MEMORY)sM --gres=gpu:%_(GPU_COUNT)s
    echo "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES"
    %_(JOB_COMMAND)s
QUEUES = {{"{name}": [["JOB_MEMORY", "{memory}", "Memory (MB)", "Memory of the job"],
    ["QUEUE_FOR_JOBS", "N", "Use queue for jobs", "Y: each engine run is its own job"]]}}
'''


def writeFakeSlurm(folder):
    """The fake queue's commands in `folder` and a hosts.conf using them; returns its path."""
    for name, text in (('sbatch', SBATCH), ('squeue', SQUEUE), ('scancel', SCANCEL)):
        path = os.path.join(folder, name)
        with open(path, 'w') as f:
            f.write(text)
        os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)
    hosts = os.path.join(folder, 'hosts.conf')
    with open(hosts, 'w') as f:
        f.write(HOSTS.format(queue=folder, name=QUEUE, memory=MEMORY_MB))
    return hosts


class TestSimcryoQueue(SimcryoTestBase):
    """A project whose hosts.conf submits to the fake SLURM."""

    @classmethod
    def setUpClass(cls):
        # setupTestProject with this class's hosts.conf (the project keeps its own copy)
        # beside the projects, in the test root (kept with SIMCRYO_TEST_ROOT)
        cls.queueDir = tempfile.mkdtemp(prefix='fake-slurm-',
                                        dir=os.environ['SCIPION_USER_DATA'])
        cls.projName = cls.__name__
        cls.proj = Manager().createProject(cls.projName,
                                           hostsConf=writeFakeSlurm(cls.queueDir))
        cls.outputPath = cls.proj.path
        os.chdir(cls.outputPath)
        simulateTruthClasses(cls, snr=2.0, shiftSigma=1.0)   # no queue

    def submitted(self):
        """[(job id, job script)] in submission order."""
        path = os.path.join(self.queueDir, 'submitted')
        if not os.path.exists(path):
            return []
        with open(path) as f:
            return [tuple(line.split(None, 1)) for line in f.read().splitlines()]

    def jobState(self, jobId):
        """The job's final state: the protocol reports finished (run.db) a moment before
        its job's process exits."""
        deadline = time.time() + JOB_TIMEOUT_S
        while True:
            with open(os.path.join(self.queueDir, '%s.state' % jobId)) as f:
                state = f.read().strip()
            if state != 'RUNNING' or time.time() > deadline:
                return state
            time.sleep(1)

    def runQueued(self, queueForJobs, label):
        prot = self.newProtocol(ProtSimcryoAlignAverage, inputClasses=self.truthClasses,
                                iterations=1, useGpu=False, numberOfThreads=2,
                                extraParams=fastArgs('align'), objLabel=label)
        prot._useQueue.set(True)
        prot.setQueueParams([QUEUE, {'JOB_MEMORY': MEMORY_MB,
                                     'QUEUE_FOR_JOBS': 'Y' if queueForJobs else 'N'}])
        before = len(self.submitted())
        self.launchProtocol(prot)   # returns once submitted when the protocol is one job
        deadline = time.time() + JOB_TIMEOUT_S
        while prot.isActive():
            self.assertLess(time.time(), deadline, 'the queued protocol did not finish')
            time.sleep(2)
            self.proj._updateProtocol(prot)   # as BaseTest.checkOutput does
        if not prot.isFinished():
            self.printLastLogLines(prot)
        self.assertTrue(prot.isFinished(), prot.getErrorMessage())
        return prot, self.submitted()[before:]

    def assertOutputs(self, prot):
        self.assertEqual(prot.outputClasses.getSize(), K)
        self.assertEqual(sum(c.getSize() for c in prot.outputClasses), N)
        self.assertSetSize(prot.outputParticles, N)
        self.assertTrue(os.path.exists(prot._getFileName('out_runlog')))

    def assertRenderedScript(self, script, gpus):
        """The job script is the hosts.conf template filled with this protocol's values."""
        with open(script) as f:
            text = f.read()
        self.assertIn('#SBATCH -p %s\n' % QUEUE, text)
        self.assertIn('--cpus-per-task=2\n', text)
        self.assertIn('#SBATCH --mem=%sM --gres=gpu:%d\n' % (MEMORY_MB, gpus), text)
        self.assertNotIn('%(', text)
        return text

    def test_whole_protocol_is_one_job(self):
        prot, jobs = self.runQueued(False, 'align through the queue')
        self.assertOutputs(prot)
        # one job, the protocol's own script, run to its end, and Scipion followed its id
        self.assertEqual(len(jobs), 1, jobs)
        jobId, script = jobs[0]
        self.assertEqual(script, prot.getSubmitDict()['JOB_SCRIPT'])
        self.assertEqual(self.jobState(jobId), 'COMPLETED 0')
        self.assertEqual([str(j) for j in prot.getJobIds()], [jobId])
        text = self.assertRenderedScript(script, gpus=0)   # a CPU run asks for no GPU
        self.assertIn('pw_protocol_run.py', text)
        self.assertIn('"%s"' % os.path.abspath(prot.getStdoutLog()), text)

    def test_each_engine_run_is_a_job(self):
        prot, jobs = self.runQueued(True, 'align, its engine run queued')
        self.assertOutputs(prot)
        self.assertEqual(len(jobs), 1, jobs)   # the engine run; conversions stay local
        jobId, script = jobs[0]
        self.assertEqual(self.jobState(jobId), 'COMPLETED 0')
        text = self.assertRenderedScript(script, gpus=0)
        command = [line for line in text.splitlines() if ' -m simcryo align ' in line]
        self.assertEqual(len(command), 1, text)
        self.assertIn('--threads 2', command[0])
        self.assertIn('--device cpu', command[0])
        self.assertNotIn('CUDA_VISIBLE_DEVICES=', command[0])
        self.assertNotIn('pw_protocol_run.py', text)
