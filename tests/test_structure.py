"""The house rules of the package: a shared core that imports no kind of experiment, kinds that never import each
other, no private names imported across modules, and modules small enough to read."""

import ast

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "resmem"
KINDS = ("vision", "lm", "regression")
MAX_LINES = 400


def modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def imports(path):
    """(imported module, imported names) of every import statement in the file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, tuple(alias.name for alias in node.names)))
    return found


def kind_of(path) -> str | None:
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else None


def imported_kinds(module: str, names) -> set[str]:
    """The kinds a statement imports: `resmem.lm.stages`, or `from resmem import lm`."""
    parts = module.split(".")
    if parts[0] != "resmem":
        return set()
    if len(parts) > 1:
        return {parts[1]} & set(KINDS)
    return set(names) & set(KINDS)


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_imports_follow_the_layers(path):
    kind = kind_of(path)
    allowed = {kind} if kind else set()
    for module, names in imports(path):
        crossed = imported_kinds(module, names) - allowed
        assert not crossed, f"{path.name} imports {module} {names}: the {kind or 'shared'} layer may not use {crossed}"
        if module.startswith("resmem"):
            private = [name for name in names if name.startswith("_")]
            assert not private, f"{path.name} imports private names {private} from {module}"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_modules_stay_readable(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(REPO)} has {lines} lines; split it (at most {MAX_LINES})"


def test_the_layer_check_sees_a_sideways_import(tmp_path):
    """The check above is not vacuous: a kind importing another kind, or the core importing a kind, is seen."""
    assert imported_kinds("resmem.vision.report", ("plt",)) == {"vision"}
    assert imported_kinds("resmem", ("lm", "io")) == {"lm"}
    assert imported_kinds("resmem.plotting", ("save",)) == set()
    fake = tmp_path / "fake.py"
    fake.write_text("def f():\n    from resmem.lm.tokens import _private\n")
    assert imports(fake) == [("resmem.lm.tokens", ("_private",))]
