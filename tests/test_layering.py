"""The data-flow rules of the layout: dicom_io never imports torch; explainers never import node or dicom_io."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mammoxai"


def _imported_modules(folder: Path) -> set[str]:
    names: set[str] = set()
    for path in folder.rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    names.add(".".join(base + ([node.module] if node.module else [])))
                else:
                    names.add(node.module or "")
    return names


def test_explainers_never_import_node_or_dicom_io():
    imported = _imported_modules(PACKAGE / "explainers")
    offending = {n for n in imported if n.startswith(("mammoxai.node", "mammoxai.dicom_io"))}
    assert not offending


def test_dicom_io_never_imports_torch_statically():
    imported = _imported_modules(PACKAGE / "dicom_io")
    assert not {n for n in imported if n.split(".")[0] in ("torch", "timm", "torchvision")}
    assert not {n for n in imported if n.startswith(("mammoxai.models", "mammoxai.explainers", "mammoxai.node"))}


def test_importing_all_of_dicom_io_loads_no_torch():
    code = ("import sys, pkgutil, importlib, mammoxai.dicom_io as d\n"
            "for m in pkgutil.iter_modules(d.__path__): importlib.import_module('mammoxai.dicom_io.' + m.name)\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
