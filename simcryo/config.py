"""Dataclass configs turned into command-line flags.

Each command keeps every hyperparameter in one dataclass whose fields carry a default and a
help text (`field(default=..., metadata={"help": "..."})`). `add_config_arguments` makes one
flag per field (`batch_size` -> `--batch-size`); `config_from_args` builds the config with
this precedence: explicit flag > `--config file.json` > dataclass default.

Renamed parameters: a field whose metadata has `"replaces": ("old_name", ...)` keeps the old
flags (`--old-name`, hidden from --help) and the old `--config` keys only to refuse them with
one line naming the new flag (`replaced_message`); `cli.main` prints it as
`simcryo CMD: error: ...` and exits 2. `mask_diameter_field` is the one particle/mask size
parameter of every command (RELION's --particle_diameter, in Å).
"""
import argparse
import dataclasses
import json
import typing
from dataclasses import field

from simcryo.errors import SimcryoError


def _flag(name):
    return "--" + name.replace("_", "-")


# ----------------------------------------------------------------------------- mask diameter
MASK_DIAMETER_EXAMPLE = 150


def mask_diameter_field(auto_help, used_for):
    """The particle/mask diameter in Å (0: automatic). It replaces the former mask radius (px
    or fraction of the box) and particle diameter flags of align, denoise and classify."""
    return field(default=0.0, metadata={
        "help": f"particle/mask diameter in Å, as RELION's --particle_diameter: {used_for} "
                f"(0: {auto_help})",
        "metavar": "Å",
        "replaces": ("mask_radius", "particle_diameter"),
        "replaced_by": "the particle/mask diameter in Å",
        "example": MASK_DIAMETER_EXAMPLE})


def force_field():
    """--force: the one flag that lets a command replace the results in its output folder."""
    return field(default=False, metadata={
        "help": "replace the results already in the output folder (without it, a folder "
                "that holds results is refused)"})


def radius_px(diameter_A, apix):
    """Mask radius in px of the input box for a diameter in Å at `apix` Å/px."""
    return float(diameter_A) / 2.0 / float(apix)


def replaced_message(old, f, in_file=None):
    """One line: `old` (a field name) was removed; what to give instead (field `f`)."""
    what = f.metadata.get("replaced_by", f"--{f.name}")
    example = f.metadata.get("example")
    if in_file is None:
        eg = f" (e.g. {_flag(f.name)} {example})" if example is not None else ""
        return f"{_flag(old)} was removed; give {what} with {_flag(f.name)}{eg}"
    eg = f' (e.g. "{f.name}": {example})' if example is not None else ""
    return (f"config file {in_file}: parameter '{old}' was removed; give {what} as "
            f"'{f.name}'{eg}")


def _replaced_fields(config_cls):
    """{old name: new field} of the renamed parameters of `config_cls`."""
    return {old: f for f in dataclasses.fields(config_cls)
            for old in f.metadata.get("replaces", ())}


class _RemovedFlag(argparse.Action):
    """A removed flag: refuses any use of it with one line naming its replacement."""

    def __init__(self, option_strings, dest, new_field=None, old=None, **kwargs):
        self.new_field, self.old = new_field, old
        super().__init__(option_strings, dest, nargs="*", default=argparse.SUPPRESS,
                         help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        raise SimcryoError(replaced_message(self.old, self.new_field))


def _field_type(f, owner):
    hints = typing.get_type_hints(owner)
    t = hints.get(f.name, f.type)
    origin = typing.get_origin(t)
    if origin is typing.Union:  # Optional[X]
        args = [a for a in typing.get_args(t) if a is not type(None)]
        t = args[0]
    return t


def add_config_arguments(parser, config_cls, skip=()):
    """Add one flag per dataclass field, plus `--config FILE`.

    Defaults are left as None on the parser so that `config_from_args` can tell which flags
    were given explicitly; the help text still shows the real default.
    """
    group = parser.add_argument_group(f"{config_cls.__name__} parameters")
    for f in dataclasses.fields(config_cls):
        if f.name in skip or f.metadata.get("cli") is False:
            continue
        t = _field_type(f, config_cls)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f.metadata.get("help", "")
        help_text = f"{help_text} (default: {default})"
        kwargs = dict(dest=f.name, default=None, help=help_text)
        if t is bool:
            group.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, **kwargs)
        elif typing.get_origin(t) in (list, tuple):
            inner = typing.get_args(t)[0] if typing.get_args(t) else float
            group.add_argument(_flag(f.name), type=inner, nargs="+", **kwargs)
        else:
            if "choices" in f.metadata:
                kwargs["choices"] = f.metadata["choices"]
            group.add_argument(_flag(f.name), type=t, metavar=f.metadata.get("metavar"),
                               **kwargs)
    taken = {s for a in parser._actions for s in a.option_strings}
    for old, f in _replaced_fields(config_cls).items():
        if f.name in skip or _flag(old) in taken:
            continue
        group.add_argument(_flag(old), action=_RemovedFlag, dest=f"removed_{old}",
                           new_field=f, old=old)
        taken.add(_flag(old))
    if not any(a.dest == "config" for a in parser._actions):
        parser.add_argument("--config", default=None, metavar="FILE.json",
                            help="JSON file of parameter values; explicit flags override it")


def load_config_file(path, config_cls):
    try:
        with open(path) as fh:
            values = json.load(fh)
    except FileNotFoundError:
        raise SimcryoError(f"config file not found: {path}")
    except json.JSONDecodeError as exc:
        raise SimcryoError(f"config file {path} is not valid JSON: {exc}")
    if not isinstance(values, dict):
        raise SimcryoError(f"config file {path}: expected a JSON object of parameter values")
    for old, f in _replaced_fields(config_cls).items():
        if old in values:
            raise SimcryoError(replaced_message(old, f, in_file=path))
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise SimcryoError(f"config file {path}: unknown parameter(s) {', '.join(unknown)}")
    return values


def config_from_args(config_cls, args):
    """Build `config_cls` from parsed args (flag > --config file > default)."""
    values = {}
    if getattr(args, "config", None):
        values.update(load_config_file(args.config, config_cls))
    for f in dataclasses.fields(config_cls):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    for f in dataclasses.fields(config_cls):
        if f.name in values and typing.get_origin(_field_type(f, config_cls)) is tuple:
            values[f.name] = tuple(values[f.name])
    cfg = config_cls(**values)
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        validate()
    return cfg


def config_to_dict(cfg):
    return dataclasses.asdict(cfg)
