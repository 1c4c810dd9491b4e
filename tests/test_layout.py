"""The package's shape: imports run one way (extras and lessons -> core -> machinery) with no circle, and no
private name of Lightning, jsonargparse or torch is relied on."""

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).parent.parent / "src" / "logreg"
# LitData is left out: the streaming extra reads its shuffler's deal of chunks and its block format, pinned to
# litdata==0.2.76 (see streaming/data.py); nothing in the template's core touches it.
FRAMEWORKS = ("lightning", "torch", "jsonargparse", "torchmetrics")
# Each module's layer; a module may import its own layer and the layers below it, never one above.
LAYERS = {"machinery": 0, "core": 1, "extras": 2, "apart": 3}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    second = module.split(".")[1] if "." in module else ""
    if second == "machinery":
        return "machinery"
    if second in ("streaming", "sweep", "serve"):
        return "extras"
    if second in ("lessons", "benchmarks", "launch", "__main__"):
        return "apart"
    return "core"  # logreg, logreg.models, logreg.data, logreg.cli, logreg.batch


def imports(path: Path) -> set[str]:
    """The logreg modules a file imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            found.update(
                n if (SRC.parent / n.replace(".", "/")).with_suffix(".py").exists() else node.module for n in names
            )
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    found |= set(re.findall(r"import_module\(\"(logreg[\w.]*)\"\)", path.read_text()))
    return {m for m in found if m == "logreg" or m.startswith("logreg.")}


GRAPH = {module_name(p): imports(p) - {module_name(p)} for p in SRC.rglob("*.py")}


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_run_one_way(module):
    above = {m for m in GRAPH[module] if LAYERS[layer(m)] > LAYERS[layer(module)]}
    assert not above, f"{module} ({layer(module)}) imports {sorted(above)} from a layer above it"


def test_no_import_circle():
    def visit(module: str, path: tuple[str, ...]) -> None:
        for target in GRAPH.get(module, ()):
            if target in path:
                pytest.fail("import circle: " + " -> ".join([*path[path.index(target) :], target]))
            if target not in done:
                visit(target, (*path, target))
        done.add(module)

    done: set[str] = set()
    for module in sorted(GRAPH):
        visit(module, (module,))


def test_no_private_name_of_a_framework_is_used():
    sources = {p: p.read_text() for p in SRC.rglob("*.py")}
    # underscore names this package defines itself (its own private parts may be used), and the standard
    # library's documented ones (os._exit, namedtuple's _replace)
    ours = {"_exit", "_replace", "_asdict", "_fields"}
    for text in sources.values():
        ours |= set(re.findall(r"\bdef (_\w+)", text)) | set(re.findall(r"\bself\.(_\w+)\s*[:=]", text))
        ours |= set(re.findall(r"^\s*(_\w+)\s*[:=]", text, re.M)) | set(re.findall(r"\bclass (_\w+)", text))
    problems = []
    for path, text in sources.items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in FRAMEWORKS:
                private = [a.name for a in node.names if a.name.startswith("_")]
                private += [part for part in node.module.split(".") if part.startswith("_")]
                problems += [f"{path.name}: imports {node.module}.{name}" for name in private]
            elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                problems += [f"{path.name}:{node.lineno}: uses .{node.attr}"] if node.attr not in ours else []
    assert not problems, "\n".join(problems)
