"""Several GPUs: a GPU list of n ids makes the distributed commands (``simcryo.cli.DISTRIBUTED``)
run as n torchrun processes, the others use the first GPU; the queue job asks for the GPUs
the engine uses. The launch line built by the protocol is run for real, on CPU (gloo)."""
import json
import os
import shlex
import subprocess

import pytest

from scipion_simcryo import Plugin, constants as cts
from scipion_simcryo.protocols import (ProtSimcryoAlignAverage, ProtSimcryoClassify2D,
                                       ProtSimcryoDenoise)
from scipion_simcryo.tests.common import (SimcryoTestBase, SimcryoUnitTest, engineHas,
                                          fastArgs, N)
from scipion_simcryo.tests.truth_input import simulateTruthClasses

TORCHRUN = '-m torch.distributed.run --standalone --nproc_per_node'


class TestGpuLaunchLine(SimcryoUnitTest):

    def test_distributed_commands_mirror_the_engine(self):
        from simcryo.cli import DISTRIBUTED
        self.assertEqual(tuple(cts.DISTRIBUTED_COMMANDS), tuple(DISTRIBUTED))

    def test_program_for_several_processes(self):
        python = Plugin.getEnginePython()
        self.assertEqual(Plugin.getProgram('align', useGpu=True, processes=4),
                         'CUDA_VISIBLE_DEVICES=%%(GPU)s %s %s 4 -m simcryo align'
                         % (python, TORCHRUN))
        self.assertEqual(Plugin.getProgram('align', useGpu=True, processes=1),
                         'CUDA_VISIBLE_DEVICES=%%(GPU)s %s -m simcryo align' % python)
        # under a queue the scheduler's CUDA_VISIBLE_DEVICES stands
        self.assertEqual(Plugin.getProgram('align', useGpu=True, processes=2,
                                           setDevices=False),
                         '%s %s 2 -m simcryo align' % (python, TORCHRUN))


class TestGpuList(SimcryoTestBase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        simulateTruthClasses(cls, snr=2.0, shiftSigma=1.0)

    def newWithGpus(self, protClass, gpus, **kwargs):
        prot = self.newProtocol(protClass, useGpu=True, gpuList=gpus, **kwargs)
        prot.setHostConfig(self.proj.getHostConfig(prot.getHostName()))
        return prot

    def engineLaunch(self, prot, command=None):
        """(program, arguments) runEngine hands to runJob."""
        calls = []
        prot.runJob = lambda program, args, **kwargs: calls.append((program, args))
        prot.runEngine(prot._getEngineArgs(), command=command)
        self.assertEqual(len(calls), 1)
        return calls[0]

    def test_distributed_protocol_runs_one_process_per_gpu(self):
        prot = self.newWithGpus(ProtSimcryoAlignAverage, '0 1 2', inputClasses=self.truthClasses,
                                numberOfThreads=7)
        program, args = self.engineLaunch(prot)
        self.assertTrue(program.startswith('CUDA_VISIBLE_DEVICES=%(GPU)s '), program)
        self.assertIn('%s 3 -m simcryo align' % TORCHRUN, program)
        tokens = shlex.split(args)
        # the job's 7 threads shared by 3 processes; each rank takes cuda:LOCAL_RANK
        self.assertEqual(tokens[tokens.index('--threads') + 1], '2')
        self.assertEqual(tokens[tokens.index('--device') + 1], 'cuda:0')
        self.assertEqual(prot.getSubmitDict()['GPU_COUNT'], 3)
        self.assertEqual(prot.warnings(), [])
        # through a queue: the scheduler's GPUs, not Scipion's renumbered list
        prot._useQueue.set(True)
        program, _ = self.engineLaunch(prot)
        self.assertNotIn('CUDA_VISIBLE_DEVICES', program)
        self.assertIn('%s 3 -m simcryo align' % TORCHRUN, program)
        # a queue dialog asking for fewer GPUs than processes is flagged, and wins
        prot.setQueueParams(['gpu', {'GPU_COUNT': '2'}])
        self.assertEqual(prot.getSubmitDict()['GPU_COUNT'], '2')
        self.assertTrue(any('GPU_COUNT (2)' in w for w in prot.warnings()), prot.warnings())
        # one process per GPU: a GPU listed twice is an error
        twice = self.newWithGpus(ProtSimcryoAlignAverage, '0 0', inputClasses=self.truthClasses)
        self.assertTrue(any('lists a GPU twice' in e for e in twice.validate()),
                        twice.validate())
        self.assertEqual([e for e in prot.validate() if 'GPU' in e], [])
        # the classification is sharded too
        classify = self.newWithGpus(ProtSimcryoClassify2D, '0 1', numberOfThreads=4,
                                    inputParticles=self.sim.outputParticles)
        program, _ = self.engineLaunch(classify)
        self.assertIn('%s 2 -m simcryo classify' % TORCHRUN, program)
        self.assertEqual(classify.getSubmitDict()['GPU_COUNT'], 2)

    def test_denoise_runs_one_process_per_gpu(self):
        prot = self.newWithGpus(ProtSimcryoDenoise, '1 3', numberOfThreads=4,
                                inputParticles=self.sim.outputParticles)
        for command in ('denoise train', 'denoise apply'):
            program, args = self.engineLaunch(prot, command=command)
            self.assertIn('%s 2 -m simcryo %s' % (TORCHRUN, command), program)
        tokens = shlex.split(args)
        self.assertEqual(tokens[tokens.index('--threads') + 1], '2')  # 4 threads, 2 ranks
        self.assertEqual(prot.getSubmitDict()['GPU_COUNT'], 2)
        self.assertFalse(any('the first of the list' in w for w in prot.warnings()))
        self.assertEqual([e for e in prot.validate() if 'GPU' in e], [])

    def test_cpu_runs_ask_no_gpu(self):
        # on CPU: no GPU asked of the queue, whatever the list
        cpu = self.newWithGpus(ProtSimcryoAlignAverage, '0 1', inputClasses=self.truthClasses)
        cpu.useGpu.set(False)
        self.assertEqual(cpu.getSubmitDict()['GPU_COUNT'], 0)
        program, args = self.engineLaunch(cpu)
        self.assertNotIn('torch.distributed.run', program)
        self.assertIn('--device cpu', args)

    @pytest.mark.skipif(not engineHas('align'), reason='`simcryo align` not available')
    def test_launch_line_runs_two_engine_processes(self):
        """The protocol's torchrun line for 2 GPUs, run on CPU (gloo): `--device cuda:0`
        becomes `--device cpu`, nothing else changes. The summary and methods then report
        the 2 processes from the engine's run.json."""
        prot = self.newProtocol(ProtSimcryoAlignAverage, inputClasses=self.truthClasses,
                                iterations=1, useGpu=False, numberOfThreads=2,
                                extraParams=fastArgs('align'))
        prot = self.launchProtocol(prot)
        self.assertIn('Engine: one process on the CPU.', prot.summary())

        gpus = self.newWithGpus(ProtSimcryoAlignAverage, '0 1', inputClasses=self.truthClasses,
                                iterations=1, numberOfThreads=2,
                                extraParams=fastArgs('align') + ' --force')
        program, args = self.engineLaunch(gpus)
        folder = os.path.abspath(prot._getFileName('output_dir'))
        args = args.replace(os.path.abspath(gpus._getFileName('input_star')),
                            os.path.abspath(prot._getFileName('input_star')))
        args = args.replace(os.path.abspath(gpus._getFileName('output_dir')), folder)
        args = args.replace('--device cuda:0', '--device cpu')
        command = '%s %s' % (program % {'GPU': '0,1'}, args)
        out = subprocess.run(command, shell=True, capture_output=True, text=True,
                             env=Plugin.getEnviron(), timeout=600)
        self.assertEqual(out.returncode, 0, out.stderr[-3000:])
        with open(prot._getFileName('out_runlog')) as f:
            self.assertEqual(json.load(f)['world_size'], 2)
        with open(prot._getFileName('out_particles')) as f:
            rows = [line for line in f if '@' in line]
        self.assertEqual(len(rows), N)
        self.assertIn('Engine: 2 processes (torchrun), on the CPU.', prot.summary())
        self.assertTrue(any('ran as 2 PyTorch processes (torchrun)' in m
                            for m in prot.getParsedMethods()), prot.getParsedMethods())
