"""Dataclass configs turned into command-line flags.

Each command keeps every hyperparameter in one dataclass whose fields carry a default and a
help text (`field(default=..., metadata={"help": "..."})`). `add_config_arguments` makes one
flag per field (`batch_size` -> `--batch-size`); `config_from_args` builds the config with
this precedence: explicit flag > `--config file.json` > dataclass default.
"""
import argparse
import dataclasses
import json
import typing

from simcryo.errors import SimcryoError


def _flag(name):
    return "--" + name.replace("_", "-")


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
