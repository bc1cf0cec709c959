"""The engine's hyperparameter defaults and help texts, read from its config dataclasses.

Forms show the values the engine really uses (no "0: engine default" fields) and cannot
drift from them. The dataclasses are read from the engine's source with `ast` rather than
imported: `simcryo.commands.align` and `simcryo.denoise` import torch, which Scipion's own
Python need not have (the engine may live in its own environment). Only literal defaults are
read; a field whose default is an expression is absent from the result.
"""
import ast
import importlib.util
import os

# command -> (module file under the engine package, dataclass name)
CONFIGS = {
    'classify': (('classify', 'config.py'), 'ClassifyConfig'),
    'align': (('commands', 'align.py'), 'AlignConfig'),
    'denoise': (('denoise', 'config.py'), 'DenoiseConfig'),
    'simulate': (('simulation', 'simulate.py'), 'SimulateConfig'),
    'select': (('commands', 'select.py'), 'SelectConfig'),
}

_cache = {}


def _enginePackageDir():
    spec = importlib.util.find_spec('simcryo')
    return list(spec.submodule_search_locations)[0]


def _literal(node):
    try:
        return ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError):
        return None


def _joinedHelp(node):
    """Help text of a field call: the second positional argument of the engine's `_f` helper
    or the ``"help"`` entry of ``metadata={...}``."""
    for kw in node.keywords:
        if kw.arg == 'metadata' and isinstance(kw.value, ast.Dict):
            for k, v in zip(kw.value.keys, kw.value.values):
                if _literal(k) == 'help':
                    return _literal(v)
    if len(node.args) > 1:
        return _literal(node.args[1])
    return None


def _fieldOf(value):
    """(default, help, choices) of one dataclass field's right-hand side."""
    if not isinstance(value, ast.Call):
        return _literal(value), None, None
    name = getattr(value.func, 'id', getattr(value.func, 'attr', ''))
    if name == 'mask_diameter_field':      # simcryo.config: always 0.0 (automatic)
        return 0.0, None, None
    default = next((_literal(kw.value) for kw in value.keywords if kw.arg == 'default'),
                   _literal(value.args[0]) if value.args else None)
    choices = next((_literal(kw.value) for kw in value.keywords if kw.arg == 'choices'), None)
    return default, _joinedHelp(value), choices


def engineFields(command):
    """{field name: (default, help text or None, choices or None)} of the config dataclass
    of `command`."""
    if command not in _cache:
        parts, className = CONFIGS[command]
        path = os.path.join(_enginePackageDir(), *parts)
        with open(path, encoding='utf-8') as f:
            tree = ast.parse(f.read(), filename=path)
        cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == className)
        fields = {}
        for node in cls.body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) \
                    and node.value is not None:
                fields[node.target.id] = _fieldOf(node.value)
        _cache[command] = fields
    return _cache[command]


def engineDefault(command, name):
    """Default of the engine's ``--name`` of `command` (KeyError when it has none)."""
    default = engineFields(command)[name][0]
    if default is None:
        raise KeyError('%s: no literal default for %s' % (command, name))
    return default


def engineHelp(command, name):
    """The engine's help text of a field (its first letter capitalised), '' when none."""
    text = engineFields(command).get(name, (None, None, None))[1] or ''
    return (text[:1].upper() + text[1:]).replace('%%', '%')


def engineChoices(command, name):
    """The fixed choices of the engine's ``--name`` (KeyError when it has none)."""
    choices = engineFields(command)[name][2]
    if not choices:
        raise KeyError('%s: %s has no fixed choices' % (command, name))
    return tuple(choices)
