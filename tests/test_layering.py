"""The data-flow rules of the layout: dicom_io never imports torch; explainers never import node or dicom_io;
only dicom_io/identity.py mints the UIDs of output objects."""

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


# --- identity: nothing outside dicom_io/identity.py mints a UID for an output object ----------------

#: Files allowed to mint UIDs, and why.
UID_MINTERS = {
    "dicom_io/identity.py": "the one place that decides every output UID (and makes up phantoms' source UIDs)",
}
_UUID_FUNCTIONS = {"uuid1", "uuid3", "uuid4", "uuid5"}


def _minted_uids(path: Path) -> list[str]:
    """Where ``path`` makes up a UID: generate_uid(), highdicom's UID() without a value, a ``2.25.`` literal
    (hand-made UUID-derived UIDs), or a uuid's ``.int`` (a uuid's ``.hex`` for a temporary file name is fine)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name == "generate_uid" or (name == "UID" and not node.args and not node.keywords):
                found.append(f"line {node.lineno}: {name}()")
        elif isinstance(node, ast.Attribute) and node.attr == "int" and isinstance(node.value, ast.Call):
            func = node.value.func
            if (func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")) in _UUID_FUNCTIONS:
                found.append(f"line {node.lineno}: uuid(...).int")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("2.25."):
            found.append(f"line {node.lineno}: literal {node.value!r}")
    return found


def test_only_identity_mints_uids():
    offending = {}
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative not in UID_MINTERS:
            found = _minted_uids(path)
            if found:
                offending[relative] = found
    assert not offending, f"UIDs minted outside dicom_io/identity.py: {offending}"


def test_the_uid_check_sees_the_ways_to_mint(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import uuid, highdicom as hd\nfrom pydicom.uid import generate_uid, UID\n"
                      "a = hd.UID()\nb = generate_uid()\nc = f'2.25.{uuid.uuid4().int}'\nd = uuid.uuid4().int\n"
                      "ok1 = UID('1.2.3')\nok2 = uuid.uuid4().hex\n")
    assert sorted(int(f.split(":")[0][5:]) for f in _minted_uids(sample)) == [3, 4, 5, 5, 6]   # none on 7, 8
    assert all((PACKAGE / name).is_file() for name in UID_MINTERS)
