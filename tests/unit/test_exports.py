"""The package's public names: ``__all__``, the lazy exports and the ``TYPE_CHECKING`` imports
agree, every name resolves and is documented, and the README imports only exported names."""

import ast
import dataclasses
import importlib
import inspect
import itertools
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import tunedlens

ROOT = Path(__file__).resolve().parents[2]
INIT = ROOT / "src" / "tunedlens" / "__init__.py"


def _type_checking_imports() -> dict[str, str]:
    """Name -> module of every ``from ... import`` under ``if TYPE_CHECKING:`` in __init__.py."""
    tree = ast.parse(INIT.read_text())
    blocks = [
        node
        for node in tree.body
        if isinstance(node, ast.If)
        and isinstance(node.test, ast.Name)
        and node.test.id == "TYPE_CHECKING"
    ]
    assert len(blocks) == 1, "__init__.py should have one `if TYPE_CHECKING:` block"
    names = {}
    for node in ast.walk(blocks[0]):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                assert alias.asname is None, f"{alias.name} is imported under another name"
                names[alias.name] = node.module
    return names


def test_all_lazy_exports_and_type_checking_imports_agree():
    assert tunedlens.__all__ == sorted(tunedlens._EXPORTS)
    assert _type_checking_imports() == tunedlens._EXPORTS


def test_train_lens_and_its_config_are_exported():
    assert {"train_lens", "TrainConfig", "recipe_config", "predict_layers", "readout"} <= set(
        tunedlens.__all__
    )


def _attribute_docstring(module, name: str) -> str | None:
    """The string literal right after ``name = ...`` at the top level of ``module``."""
    body = ast.parse(inspect.getsource(module)).body
    for node, following in itertools.pairwise(body):
        targets = [node.target] if isinstance(node, ast.AnnAssign) else getattr(node, "targets", [])
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            value = getattr(following, "value", None)
            if isinstance(following, ast.Expr) and isinstance(value, ast.Constant):
                return value.value
    return None


@pytest.mark.parametrize("name", tunedlens.__all__)
def test_every_export_resolves_and_is_documented(name):
    value = getattr(tunedlens, name)
    module = importlib.import_module(tunedlens._EXPORTS[name])
    assert getattr(module, name) is value
    if inspect.isclass(value) or inspect.isroutine(value):
        doc = value.__dict__.get("__doc__") if inspect.isclass(value) else value.__doc__
    else:  # data (STATS): documented by the string after its assignment
        doc = _attribute_docstring(module, name)
    assert doc and doc.strip(), f"tunedlens.{name} has no docstring"


def test_dir_lists_the_exports_and_unknown_names_fail():
    listed = dir(tunedlens)
    assert set(tunedlens.__all__) <= set(listed) and "__version__" in listed
    assert "importlib" not in listed and "TYPE_CHECKING" not in listed
    with pytest.raises(AttributeError, match="no attribute 'train_tuned_lens'"):
        tunedlens.train_tuned_lens  # noqa: B018


def test_the_readme_imports_only_exported_names():
    text = (ROOT / "README.md").read_text()
    imported = set()
    for block in re.findall(r"```python\n(.*?)```", text, flags=re.S):
        for match in re.finditer(r"^from tunedlens import (.+)$", block, flags=re.M):
            imported |= {name.strip() for name in match[1].split("#")[0].split(",")}
    assert {"Lensed", "predict_layers", "readout", "load_lens"} <= imported
    assert imported <= set(tunedlens.__all__)


def test_importing_the_package_loads_nothing():
    code = "import sys, tunedlens; print(sorted(m for m in sys.modules if m.startswith(('torch', 'tunedlens.'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _documented_fields(cls) -> set[str]:
    """Fields of a dataclass followed by a docstring in its class body (griffe reads those)."""
    documented = set()
    for klass in cls.__mro__:
        if klass is object or not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for statement, following in itertools.pairwise(body):
            if (
                isinstance(statement, ast.AnnAssign)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                documented.add(statement.target.id)
    return documented


@pytest.mark.parametrize("name", tunedlens.__all__)
def test_every_export_documents_its_arguments_and_result(name):
    """Google style: ``Args:`` when it takes arguments, ``Returns:`` when it returns something.

    A dataclass documents its fields one by one (a docstring under each) instead of ``Args:``.
    """
    value = getattr(tunedlens, name)
    if not (inspect.isclass(value) or inspect.isroutine(value)):
        return
    if inspect.isclass(value) and issubclass(value, BaseException):
        return
    doc = (value.__dict__.get("__doc__") if inspect.isclass(value) else value.__doc__) or ""
    parameters = [
        p for p in inspect.signature(value).parameters.values() if p.kind is not p.VAR_KEYWORD
    ]
    if inspect.isclass(value) and dataclasses.is_dataclass(value) and "Args:" not in doc:
        undocumented = {f.name for f in dataclasses.fields(value) if f.init}
        undocumented -= _documented_fields(value)
        assert not undocumented, f"{name}: fields without a docstring: {sorted(undocumented)}"
    elif parameters:
        assert "Args:" in doc, f"{name} takes arguments and its docstring has no Args:"
    if inspect.isroutine(value):
        returns = inspect.signature(value).return_annotation
        if returns not in (None, "None", inspect.Signature.empty):
            assert "Returns:" in doc or "Yields:" in doc, f"{name}'s docstring has no Returns:"
