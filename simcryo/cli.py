"""`simcryo <command>` dispatcher.

Command modules are imported lazily so that `simcryo simulate --help` does not pay for
importing the classifier, and a broken optional command cannot break the others.
"""
import argparse
import importlib
import sys

from simcryo import __version__
from simcryo.errors import SimcryoError

COMMANDS = {
    "simulate": "Simulate labelled particle images from a volume (test data with known truth).",
    "denoise": "Train or apply a particle denoiser (reference-guided GAN or self-supervised).",
    "classify": "Unsupervised 2D classification: contrastive features, neighbours, SCAN, self-labelling.",
    "align": "Fourier-space in-plane alignment inside classes and weighted class averages.",
    "evaluate": "Score a classification against true labels (ACC/NMI/ARI/FMI, FRC, pose errors).",
    "select": "Rank the classes of any 2D classification and keep the good ones (junk out).",
}
# commands sharded over torchrun's ranks (simcryo.distributed); the others run in one process
DISTRIBUTED = ("align", "classify", "denoise")


def _load(name):
    return importlib.import_module(f"simcryo.commands.{name}")


def build_parser(commands=None):
    parser = argparse.ArgumentParser(
        prog="simcryo",
        description="SimCryoCluster-style 2D classification of cryo-EM particles. "
                    "Inputs: RELION 3.1 STAR + MRC stacks, or a bare .mrcs stack.")
    parser.add_argument("--version", action="version", version=f"simcryo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in commands or COMMANDS:
        try:
            module = _load(name)
        except ModuleNotFoundError as exc:
            if commands or exc.name != f"simcryo.commands.{name}":
                raise
            continue  # listing all commands: leave out one that is not installed
        help_text = COMMANDS[name]
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
    return parser


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    # Only build the sub-parser that is asked for: importing every command costs seconds.
    wanted = [a for a in argv if a in COMMANDS][:1]
    try:
        parser = build_parser(wanted or None)
    except ModuleNotFoundError as exc:
        print(f"simcryo: error: command not available: {exc}", file=sys.stderr)
        return 2
    try:
        args = parser.parse_args(argv)
    except SimcryoError as exc:  # a removed flag (simcryo.config): one line, exit 2
        print(f"{' '.join(['simcryo'] + wanted)}: error: {exc}", file=sys.stderr)
        return 2
    if not args.command:
        parser.print_help()
        return 2
    from simcryo import distributed  # imports torch: not for --help and --version
    if distributed.launched() and args.command not in DISTRIBUTED:
        _error_line(args.command, f"runs in one process only, not under torchrun (sharded "
                                  f"over ranks: {', '.join(DISTRIBUTED)})")
        return 2
    try:
        with distributed.session():  # torchrun's process group (a no-op without torchrun)
            return int(_load(args.command).main(args) or 0)
    except distributed.PeerLost:  # another rank failed; it, or torchrun, says why
        return 1
    except SimcryoError as exc:
        _error_line(args.command, exc)
        return 2
    except OSError as exc:  # full disk, read-only or vanished files: the user's to fix
        from simcryo.outputs import describe_os_error
        _error_line(args.command, describe_os_error(exc))
        return 2
    except KeyboardInterrupt:
        _error_line(args.command, None)
        return 130


def _error_line(command, error):
    """`simcryo <command>: error: ...` (error None: interrupted); under torchrun one line per
    failure, not one per rank (simcryo.distributed.error_prefix)."""
    from simcryo import distributed
    tag = distributed.error_prefix(error)
    if tag is not None:
        text = "interrupted" if error is None else f"error: {tag}{error}"
        print(f"simcryo {command}: {text}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
