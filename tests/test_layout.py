"""The house's layout (spml_tf/__init__.py): imports run one way, every folder says what it holds, no module is
long without a reason, and every method's hyper-parameters are Config fields and flags of the training command."""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "spml_tf")
# What each part of the package may import (besides itself): the flow, downwards.
LAYERS = {
    "core": set(),
    "data": {"core"},
    "nets": {"core"},
    "methods": {"core"},
    "training": {"methods", "nets", "data", "core"},
    "serving": {"training", "methods", "nets", "data", "core"},
    "commands": {"serving", "training", "methods", "nets", "data", "core", "commands"},
}
FOLDERS = ("core", "data", "nets", "methods", "training", "serving")


def _modules():
    for directory, _, names in os.walk(PACKAGE):
        for name in names:
            if name.endswith(".py"):
                yield os.path.join(directory, name)


def _part(path_or_module):
    """The layer of a file of the package, or of a dotted module name under spml_tf."""
    if path_or_module.endswith(".py"):
        relative = os.path.relpath(path_or_module, PACKAGE).split(os.sep)
    else:
        relative = path_or_module.split(".")[1:]
    return relative[0] if relative and relative[0] in FOLDERS else "commands"


def _imports(path):
    """Every spml_tf module a file imports, at its top or inside a function."""
    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name.startswith("spml_tf"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("spml_tf"):
            # `from spml_tf.data import records`: the modules (or names) it takes
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def test_imports_run_one_way():
    wrong = []
    for path in _modules():
        part = _part(path)
        for module in _imports(path):
            other = _part(module)
            if other != part and other not in LAYERS[part]:
                wrong.append(f"{os.path.relpath(path, ROOT)} ({part}) imports {module} ({other})")
    assert not wrong, "\n".join(wrong)


def test_the_rule_is_not_empty():
    """The check above finds what it looks for: a file of `data` importing training is reported."""
    assert _part(os.path.join(PACKAGE, "data", "pipeline.py")) == "data"
    assert _part("spml_tf.training.trainer") == "training" and "training" not in LAYERS["data"]
    assert "spml_tf.data.records" in set(_imports(os.path.join(PACKAGE, "data", "pipeline.py")))


@pytest.mark.parametrize("folder", FOLDERS)
def test_every_folder_says_what_it_holds_and_may_import(folder):
    text = ast.get_docstring(ast.parse(open(os.path.join(PACKAGE, folder, "__init__.py")).read()))
    assert text and "Imports" in text, folder


def test_no_module_is_over_400_lines_without_a_reason_at_its_top():
    long = []
    for path in _modules():
        lines = open(path).read().splitlines()
        docstring = ast.get_docstring(ast.parse("\n".join(lines))) or ""
        if len(lines) > 420 and "Longer than" not in docstring:
            long.append(f"{os.path.relpath(path, ROOT)}: {len(lines)} lines")
    assert not long, long


def test_every_registered_methods_hyperparameters_are_config_fields_and_flags():
    import dataclasses

    from absl import flags

    from spml_tf import config, methods, train

    train.define_flags()
    fields = {field.name for field in dataclasses.fields(config.Config)}
    for name, loss in methods.LOSSES.items():
        for parameter in loss.hyperparameters:
            assert parameter in methods.HYPERPARAMETERS, (name, parameter)  # declared by a family
            assert parameter in fields and parameter in flags.FLAGS, (name, parameter)
            assert flags.FLAGS[parameter].help == methods.HYPERPARAMETERS[parameter].help
    assert set(train.config_flags()) == fields - {"dataset", "threshold"}


def test_no_module_imports_itself_back():
    """No circle of imports between modules (train.py and train_cli.py imported each other before)."""
    def module_of(name):
        path = os.path.join(ROOT, *name.split("."))
        if os.path.isfile(path + ".py"):
            return name
        if os.path.isfile(os.path.join(path, "__init__.py")):
            return name
        return module_of(name.rsplit(".", 1)[0]) if "." in name else None  # a name inside a module

    graph = {}
    for path in _modules():
        relative = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        name = relative[: -len(".__init__")] if relative.endswith(".__init__") else relative
        graph[name] = {module_of(imported) for imported in _imports(path)} - {None, name}
        # A package's modules import its __init__ first: only what __init__ itself imports counts for it.
        graph[name] -= {parent for parent in graph[name] if name.startswith(parent + ".")}

    def visit(node, trail):
        if node in trail:
            raise AssertionError(" -> ".join(trail[trail.index(node):] + [node]))
        for other in sorted(graph.get(node, ())):
            visit(other, trail + [node])

    for node in sorted(graph):
        visit(node, [])
