"""Dependencies go one way: no module imports a package of a higher layer, nor a package of its
own layer (layers in docs/ARCHITECTURES.md, "Layers")."""

import ast
import os
import re
from typing import Iterator, List, Optional, Tuple

from common import REPO

#: bottom to top; a package may import the packages of the layers below it (and itself)
LAYERS = [
    ["utils"],
    ["data"],
    ["modeling", "evaluation"],
    ["config"],
    ["engine"],
    ["deploy", "benchmark", "testbed"],
]
LEVEL = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}
PACKAGE = os.path.join(REPO, "clipdistill")


def _imported(module: str, is_package: bool, source: str) -> Iterator[Tuple[int, str]]:
    """``(line, imported clipdistill module)`` of every import in ``source`` (top level or
    inside functions) of the module ``module`` (dotted)."""
    package = module if is_package else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "clipdistill":  # from clipdistill import data / from . import data
                for alias in node.names:
                    yield node.lineno, f"clipdistill.{alias.name}"
            else:
                yield node.lineno, target


def _layer_package(dotted: str) -> Optional[str]:
    parts = dotted.split(".")
    if parts[0] != "clipdistill" or len(parts) < 2:
        return None
    return parts[1]


def violations(module: str, is_package: bool, source: str) -> List[str]:
    """The imports of ``module`` against the layers, as ``"module:line imports target"``."""
    own = _layer_package(module)
    if own is None:  # clipdistill/__init__.py: importing clipdistill registers everything
        return []
    assert own in LEVEL, f"{module}: package {own!r} is in no layer of LAYERS"
    out = []
    for line, target in _imported(module, is_package, source):
        other = _layer_package(target)
        if other is None or other == own:
            continue
        assert other in LEVEL, f"{module}:{line}: {target} is in no layer of LAYERS"
        if LEVEL[other] >= LEVEL[own]:
            out.append(f"{module}:{line} imports {target}")
    return out


def _modules() -> Iterator[Tuple[str, bool, str]]:
    for folder, _, files in os.walk(PACKAGE):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                is_package = rel.endswith(".__init__")
                module = rel[: -len(".__init__")] if is_package else rel
                with open(path, encoding="utf-8") as f:
                    yield module, is_package, f.read()


def test_no_module_imports_a_package_above_it_or_beside_it():
    bad = [v for module, pkg, source in _modules() for v in violations(module, pkg, source)]
    assert not bad, "imports against the layers of docs/ARCHITECTURES.md:\n" + "\n".join(bad)


def test_the_check_fails_on_an_import_against_the_layers():
    # upward (modeling -> engine), sideways (deploy -> benchmark), lazily inside a function, and
    # written relatively; downward and within a package are fine
    source = (
        "from ...engine.setup import get_cfg\n"
        "def f():\n"
        "    from clipdistill.benchmark import run_benchmark\n"
        "from ..clip import loader\n"
        "from ...utils.io import atomic_write\n"
    )
    found = violations("clipdistill.modeling.teacher.x", False, source)
    assert found == [
        "clipdistill.modeling.teacher.x:1 imports clipdistill.engine.setup",
        "clipdistill.modeling.teacher.x:3 imports clipdistill.benchmark",
    ]
    assert violations("clipdistill.deploy.x", False, "from ..benchmark import run\n")
    assert violations("clipdistill.utils", True, "from clipdistill import data\n")
    assert not violations("clipdistill.engine.x", False, "from ..modeling import SAN\n")


def test_docs_list_the_layers():
    with open(os.path.join(REPO, "docs", "ARCHITECTURES.md"), encoding="utf-8") as f:
        text = f.read()
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    # a numbered list, bottom first: one item per layer naming its packages, then tools/
    items = re.findall(r"^\d+\. (.*)$", section, flags=re.M)
    named = [re.findall(r"`(\w+)/`", item.split(":")[0]) for item in items]
    assert named == LAYERS + [["tools"]], named
