"""The folders import one way only (``docs/design.md``, "Layers").

Layers, lowest first; a module may import its own layer and the layers below it, never one above:

0. ``utils/*.py``: the shared ground (config, channels, grid, times, errors, I/O, logging)
1. ``networks/``: the model
2. ``utils/data/``: the datasets on disk and reading them
3. ``utils/conversion/``: raw ERA5 into the layout
4. ``utils/evaluation/``: rollouts, scores, result files
5. ``utils/training/``: what a training run needs beyond the model
6. the entry points: ``train.py``, ``inference.py``, ``tools/``, ``benchmarks/``

Imports are read with ``ast`` (module level and inside functions), so a deferred import counts.
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = (
    ("ground", ("utils",)),
    ("networks", ("networks",)),
    ("data", ("utils/data",)),
    ("conversion", ("utils/conversion",)),
    ("evaluation", ("utils/evaluation",)),
    ("training", ("utils/training",)),
    ("entry points", ("train.py", "inference.py", "tools", "benchmarks")),
)
PACKAGES = ("utils", "networks", "tools", "benchmarks", "train", "inference")


def layer_of(path: str) -> int | None:
    """Layer index of a repository-relative path (``utils/data/dataset.py``), None outside them.

    The deepest declared folder wins: ``utils/data/x.py`` is data, ``utils/x.py`` ground."""
    best, depth = None, -1
    for index, (_name, places) in enumerate(LAYERS):
        for place in places:
            if place.endswith(".py"):
                hit = path == place
            elif place == "utils":
                hit = os.path.dirname(path) == "utils"
            else:
                hit = path.startswith(place + "/")
            if hit and place.count("/") > depth:
                best, depth = index, place.count("/")
    return best


def module_path(module: str, root: str) -> str | None:
    """Repository-relative file of a dotted module name (a package: its ``__init__.py``)."""
    base = os.path.join(*module.split("."))
    for candidate in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(os.path.join(root, candidate)):
            return candidate.replace(os.sep, "/")
    return None


def imported_modules(tree: ast.AST, root: str) -> list[tuple[int, str]]:
    """``(line, file)`` of every project module a file imports (``from utils.data import h5_reader``
    is the module ``utils/data/h5_reader.py``)."""
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names]
            names = [n if module_path(n, root) else node.module for n in names]
        for name in names:
            if name.split(".")[0] in PACKAGES:
                path = module_path(name, root)
                if path is not None:
                    found.append((node.lineno, path))
    return found


def source_files(root: str) -> list[str]:
    """Repository-relative paths of every Python file of the layered folders and entry points."""
    files = [p for p in ("train.py", "inference.py") if os.path.isfile(os.path.join(root, p))]
    for top in ("utils", "networks", "tools", "benchmarks"):
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, top)):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            rel = os.path.relpath(dirpath, root)
            files += [f"{rel}/{f}".replace(os.sep, "/") for f in filenames if f.endswith(".py")]
    return sorted(files)


def violations(root: str) -> list[str]:
    """Every import that runs upward, and every file outside the declared layers."""
    problems = []
    for path in source_files(root):
        own = layer_of(path)
        if own is None:
            problems.append(f"{path}: in no layer (add its folder to LAYERS and docs/design.md)")
            continue
        with open(os.path.join(root, path)) as f:
            tree = ast.parse(f.read(), path)
        for line, target in imported_modules(tree, root):
            theirs = layer_of(target)
            if theirs is not None and theirs > own:
                problems.append(
                    f"{path}:{line} ({LAYERS[own][0]}) imports {target} ({LAYERS[theirs][0]})"
                )
    return problems


def test_imports_run_downward_only():
    assert violations(ROOT) == []


def test_every_layer_has_modules():
    layers = {layer_of(p) for p in source_files(ROOT)}
    assert layers == set(range(len(LAYERS)))


def _write(root, path, text=""):
    full = os.path.join(root, path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "w") as f:
        f.write(text)


@pytest.mark.parametrize(
    "importer, statement, culprit",
    [
        ("utils/grid.py", "from utils.data.dataset import ERA5Dataset", "utils/data/dataset.py"),
        ("networks/vamoe.py", "import utils.training.checkpoint", "utils/training/checkpoint.py"),
        ("utils/data/stats.py", "def f():\n    from utils.evaluation import metrics\n", "metrics"),
        ("utils/evaluation/rollout.py", "from utils.training import checkpoint", "checkpoint"),
    ],
)
def test_an_upward_import_is_reported(tmp_path, importer, statement, culprit):
    root = str(tmp_path)
    for path in (
        "utils/__init__.py",
        "utils/grid.py",
        "networks/__init__.py",
        "networks/vamoe.py",
        "utils/data/__init__.py",
        "utils/data/dataset.py",
        "utils/data/stats.py",
        "utils/evaluation/__init__.py",
        "utils/evaluation/metrics.py",
        "utils/evaluation/rollout.py",
        "utils/training/__init__.py",
        "utils/training/checkpoint.py",
    ):
        _write(root, path)
    assert violations(root) == []
    _write(root, importer, statement + "\n")
    problems = violations(root)
    assert len(problems) == 1 and problems[0].startswith(importer) and culprit in problems[0]


def test_a_folder_outside_the_layers_is_reported(tmp_path):
    _write(str(tmp_path), "utils/__init__.py")
    assert violations(str(tmp_path)) == []
    _write(str(tmp_path), "utils/extras/__init__.py")
    _write(str(tmp_path), "utils/extras/thing.py")
    assert violations(str(tmp_path)) == [
        "utils/extras/__init__.py: in no layer (add its folder to LAYERS and docs/design.md)",
        "utils/extras/thing.py: in no layer (add its folder to LAYERS and docs/design.md)",
    ]


def test_the_design_document_shows_every_layer():
    with open(os.path.join(ROOT, "docs", "design.md")) as f:
        text = f.read()
    section = text[text.index("## Layers") :]
    for _name, places in LAYERS:
        for place in places:
            shown = place if place.endswith(".py") else place + "/"
            assert shown in section, shown
