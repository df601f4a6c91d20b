"""The house rules of the package: a shared core that imports no kind of experiment, kinds that never import each
other, no private names imported across modules, and modules small enough to read."""

import ast
import re

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


def documented_functions():
    """(name, function) of every function and public method that docs/api.md documents (`::: resmem.…`)."""
    import importlib
    import inspect

    found = []
    for dotted in re.findall(r"^::: (resmem[\w.]+)$", (REPO / "docs" / "api.md").read_text(), flags=re.M):
        try:
            target = importlib.import_module(dotted)
        except ModuleNotFoundError:
            module, _, name = dotted.rpartition(".")
            target = getattr(importlib.import_module(module), name)
        if inspect.ismodule(target):
            members = [(f"{dotted}.{n}", f) for n, f in vars(target).items()
                       if inspect.isfunction(f) and f.__module__ == dotted and not n.startswith("_")]  # fmt: skip
        elif inspect.isclass(target):
            methods = {n: getattr(f, "__func__", f) for n, f in vars(target).items()}  # classmethods unwrapped
            members = [(f"{dotted}.{n}", f) for n, f in methods.items()
                       if (n == "__init__" or not n.startswith("_")) and inspect.isfunction(f)]  # fmt: skip
        else:
            members = [(dotted, target)]
        found += members
    return found


def test_the_documented_api_is_annotated():
    """Every parameter and return value of what docs/api.md documents carries a type annotation (py.typed)."""
    import inspect

    missing = []
    for name, function in documented_functions():
        signature = inspect.signature(function)
        bare = [p for p, v in signature.parameters.items() if p not in ("self", "cls") and v.annotation is v.empty
                and v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)]  # fmt: skip
        no_return = signature.return_annotation is signature.empty
        if bare or no_return:
            missing.append(f"{name}({', '.join(bare)}){' without a return annotation' if no_return else ''}")
    assert len(documented_functions()) > 40 and not missing, missing
