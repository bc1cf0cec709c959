"""The engine's dependency direction, read from the source with `ast` (no module is imported).

    entry (cli, __main__)  ->  commands  ->  stages  ->  foundation

- entry: `simcryo/cli.py`, `simcryo/__main__.py`; the only modules that may import `commands`.
- `commands`: one module per command; may import anything in the engine except another
  command (a broken command must not break the others; shared code belongs below).
- stages: `align`, `classify`, `denoise`, `simulation`, `evaluation`. A stage may import the
  foundation, its own modules, and another stage only through that stage's package API:
  `import simcryo.align` or `from simcryo.align import X` with X a public name of
  `simcryo/align/__init__.py` (its `__all__`, else the names it binds); never
  `simcryo.align.<module>`.
- foundation: `image`, `io`, `models` and the core modules (`simcryo/__init__.py`, `errors`,
  `config`, `runtime`); never imports a stage, `commands` or an entry module.

Every import counts: module-level, function-level, relative, and
`importlib.import_module("...")` with a literal name. A new top-level package or module must
be given a layer in LAYERS before the test passes. That the engine never imports Scipion
(pyworkflow, pwem, scipion_simcryo) is enforced by
scipion_simcryo/tests/test_plugin.py::test_engine_never_imports_the_plugin_or_scipion.
"""
import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ENGINE = REPO / "simcryo"

STAGES = ("align", "classify", "denoise", "simulation", "evaluation", "selection")
LAYERS = {
    "cli": "entry", "__main__": "entry",
    "commands": "commands",
    **{name: "stage" for name in STAGES},
    "image": "foundation", "io": "foundation", "models": "foundation",
    "__init__": "foundation", "errors": "foundation", "config": "foundation",
    "runtime": "foundation", "outputs": "foundation", "distributed": "foundation",
}

# Imports that break the rules on purpose: {(importing file, imported target): one-line reason}.
ALLOWED_EXCEPTIONS = {}


def _module_name(path):
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def _is_module(dotted):
    rel = Path(*dotted.split("."))
    return (REPO / rel.with_suffix(".py")).is_file() or (REPO / rel / "__init__.py").is_file()


def _layer_key(dotted):
    """'simcryo.align.rings' -> 'align'; 'simcryo' -> '__init__'; 'simcryo.errors' -> 'errors'."""
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _public_names(package):
    """Public names of an engine package: its `__all__`, else the non-underscore names its
    `__init__.py` binds at top level."""
    init = REPO / Path(*package.split(".")) / "__init__.py"
    tree = ast.parse(init.read_text(), str(init))
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id == "__all__":
                    return {elt.value for elt in node.value.elts}
                if isinstance(target, ast.Name):
                    names.add(target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
    return {n for n in names if not n.startswith("_")}


def engine_imports(module, source):
    """(line, target module, imported name or None) for every engine import in `source`.

    `from simcryo.align import rings` gives target 'simcryo.align.rings' (a submodule);
    `from simcryo.align import RingAligner` gives ('simcryo.align', 'RingAligner')."""
    tree = ast.parse(source)
    is_package = module.count(".") == 0 or module.endswith(".__init__")
    module = module.removesuffix(".__init__")
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[:len(base) - node.level + (1 if is_package else 0)]
                parent = ".".join(base + ([node.module] if node.module else []))
            else:
                parent = node.module
            for alias in node.names:
                sub = f"{parent}.{alias.name}"
                if alias.name != "*" and _is_module(sub):
                    found.append((node.lineno, sub, None))
                else:
                    found.append((node.lineno, parent, alias.name))
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name)
                       and node.func.id in ("import_module", "__import__")))):
            found.append((node.lineno, node.args[0].value, None))
    return [f for f in found if f[1] == "simcryo" or f[1].startswith("simcryo.")]


def violations(module, source):
    """[(line, target, why)] for the imports of engine module `module` (dotted name; a package
    as 'simcryo.x.__init__') that break the layering."""
    src_key = _layer_key(module.removesuffix(".__init__"))
    src_layer = LAYERS.get(src_key)
    out = []
    if src_layer is None:
        return [(0, module, f"'{src_key}' has no layer: add it to LAYERS in test_layering.py")]
    for line, target, name in engine_imports(module, source):
        key = _layer_key(target)
        layer = LAYERS.get(key)
        shown = target if name is None else f"{target}.{name}"
        if layer is None:
            out.append((line, target, f"imports {shown}: '{key}' has no layer in LAYERS"))
        elif layer == "entry":
            if src_key != "__main__":
                out.append((line, target, f"imports {shown}: only simcryo/__main__.py imports "
                                          "the entry point"))
        elif layer == "commands":
            if src_key != "cli" and not (src_layer == "commands" and target == "simcryo.commands"):
                out.append((line, target, f"imports {shown}: only simcryo/cli.py imports "
                                          "commands (a command never imports another)"))
        elif src_layer in ("entry", "commands"):
            continue
        elif layer == "stage":
            if src_layer == "foundation":
                out.append((line, target, f"imports {shown}: the foundation (image, io, models, "
                                          "core) never imports a stage"))
            elif key != src_key:
                stage = f"simcryo.{key}"
                if target != stage:
                    out.append((line, target, f"imports {shown}: reach another stage through "
                                              f"its package API (`from {stage} import ...`)"))
                elif name is not None and name not in _public_names(stage):
                    out.append((line, f"{stage}.{name}",
                                f"imports {shown}: '{name}' is not a public name of {stage} "
                                f"(simcryo/{key}/__init__.py)"))
    return out


def _engine_modules():
    for path in sorted(ENGINE.rglob("*.py")):
        name = _module_name(path)
        if path.name == "__init__.py":
            name += ".__init__"
        yield path, name


def _current_violations():
    found = {}
    for path, module in _engine_modules():
        rel = path.relative_to(REPO).as_posix()
        for line, target, why in violations(module, path.read_text()):
            found.setdefault((rel, target), []).append(f"{rel}:{line}: {why}")
    return found


def test_engine_modules_follow_the_dependency_direction():
    found = _current_violations()
    bad = [msg for key, msgs in sorted(found.items())
           if key not in ALLOWED_EXCEPTIONS
           for msg in msgs]
    assert not bad, "layering violations:\n" + "\n".join(bad)


def test_allowed_exceptions_are_still_needed():
    """Keep the lists honest: an entry that no longer matches an import must be removed."""
    found = _current_violations()
    stale = sorted(set(ALLOWED_EXCEPTIONS) - set(found))
    assert not stale, ("no longer violated, remove from ALLOWED_EXCEPTIONS in "
                       f"{Path(__file__).name}: {stale}")


@pytest.mark.parametrize("module, source, allowed", [
    ("simcryo.denoise.pairs", "from simcryo.simulation import project", True),
    ("simcryo.denoise.pairs", "import simcryo.simulation", True),
    ("simcryo.denoise.pairs", "from simcryo.simulation import projection", False),
    ("simcryo.denoise.pairs", "from simcryo.simulation.projection import project", False),
    ("simcryo.denoise.pairs", "def f():\n    import simcryo.simulation.projection", False),
    ("simcryo.denoise.pairs", "from ..simulation import projection", False),
    ("simcryo.denoise.pairs", "from simcryo.simulation import not_exported_name", False),
    ("simcryo.denoise.pairs", "from simcryo.denoise.noise import normalize", True),
    ("simcryo.denoise.pairs", "from . import noise", True),
    ("simcryo.classify.refine", "from simcryo.align import RingAligner", True),
    ("simcryo.classify.refine", "from simcryo.image.mask import soft_mask", True),
    ("simcryo.classify.refine", "from simcryo import runtime", True),
    ("simcryo.classify.refine", "from simcryo.commands import classify", False),
    ("simcryo.classify.refine", "from simcryo.cli import main", False),
    ("simcryo.image.geometry", "from simcryo.align import RingAligner", False),
    ("simcryo.image.geometry", "from simcryo.io.mrc import read_volume", True),
    ("simcryo.runtime", "from simcryo.evaluation import metrics", False),
    ("simcryo.models.heads", "import importlib\nimportlib.import_module('simcryo.classify')",
     False),
    ("simcryo.commands.align", "from simcryo.align.rings import AlignParams", True),
    ("simcryo.commands.align", "from simcryo.evaluation.frc import frc", True),
    ("simcryo.commands.align", "from simcryo.commands.classify import main", False),
    ("simcryo.cli", "import importlib\nimportlib.import_module('simcryo.commands.align')", True),
    ("simcryo.__main__", "from simcryo.cli import main", True),
    ("simcryo.newthing", "import numpy", False),
])
def test_checker_verdicts(module, source, allowed):
    assert (violations(module, source) == []) == allowed
