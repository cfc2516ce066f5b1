"""The layout rules of docs/architecture.md, read from the source (no imports are executed).

- First-party imports sit at the top of a file; inside functions only heavy third-party libraries load lazily.
- No first-party import cycle (module level).
- Layers: ``models`` imports neither ``server`` nor ``training``; ``server`` never imports ``training``;
  ``training`` never imports ``server``.
- No package folder holds more than 20 modules; ``training/`` itself holds only thin entry modules.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("models", "server", "training", "bench")
FIRST_PARTY = set(PACKAGES) | {"tests"}
# Imported lazily on purpose: slow to import, optional, or only needed on one path.
HEAVY = {"torch", "torchvision", "diffsynth", "accelerate", "transformers", "tokenizers", "peft", "cv2",
         "imageio_ffmpeg", "matplotlib", "gradio", "uvicorn", "simplejpeg", "websockets", "wandb", "ray",
         "playwright", "safetensors", "tqdm", "torchao", "deepspeed", "modelscope"}
MAX_MODULES = 20
LAYERS = {"models": {"server", "training"}, "server": {"training"}, "training": {"server"}}


def python_files(*roots):
    for root in roots:
        yield from sorted((ROOT / root).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(node, path: Path) -> list[str]:
    """Absolute module names an import statement refers to (``from pkg import mod`` names ``pkg.mod`` too)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        package = module_name(path).split(".")
        if path.name != "__init__.py":
            package = package[:-1]
        base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    return [base] + [f"{base}.{alias.name}" for alias in node.names]


def nested_imports(tree):
    for function in ast.walk(tree):
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for statement in function.body:
                for node in ast.walk(statement):
                    if isinstance(node, (ast.Import, ast.ImportFrom)):
                        yield node


def test_inside_functions_only_heavy_third_party_libraries_are_imported():
    offenders = []
    for path in python_files(*PACKAGES, "tests", "scripts"):
        tree = ast.parse(path.read_text())
        for node in nested_imports(tree):
            roots = {name.split(".")[0] for name in imported_modules(node, path)}
            if getattr(node, "level", 0) or roots - HEAVY:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert not offenders, "imports inside functions (move them to the top of the file):\n" + "\n".join(offenders)


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in python_files(*PACKAGES)}
    graph = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges.update(m for m in imported_modules(node, path) if m in modules and m != name)
        graph[name] = edges
    return graph


def test_no_first_party_import_cycle():
    graph = import_graph()
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_layers_point_one_way(package):
    forbidden = LAYERS[package]
    offenders = [f"{module} imports {target}" for module, targets in import_graph().items()
                 if module.split(".")[0] == package for target in targets if target.split(".")[0] in forbidden]
    assert not offenders, "\n".join(offenders)


def test_package_folders_stay_small():
    for folder in [ROOT / p for p in PACKAGES] + [d for p in PACKAGES for d in (ROOT / p).rglob("*") if d.is_dir()]:
        modules = [f for f in folder.glob("*.py") if f.name != "__init__.py"]
        assert len(modules) <= MAX_MODULES, f"{folder.relative_to(ROOT)} holds {len(modules)} modules"


def test_training_holds_only_entry_modules():
    """Each ``training/<name>.py`` is a command: a ``main`` and its argument parsing, over the subpackages."""
    for path in (ROOT / "training").glob("*.py"):
        if path.name == "__init__.py":
            continue
        tree = ast.parse(path.read_text())
        names = [node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))]
        assert "main" in names, f"{path.name}: an entry module needs main()"
        assert not any(isinstance(node, ast.ClassDef) for node in tree.body), f"{path.name} defines a class"
        assert len(path.read_text().splitlines()) <= 150, f"{path.name} is no thin entry module"
