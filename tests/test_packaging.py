"""The installed package must hold every code folder as a sub-package (a missing one is silently dropped)."""

import importlib
import pathlib
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SUBPACKAGES = ["search", "spaces", "trainers", "dashboards"]


def _listed() -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]


def _on_disk() -> list[str]:
    found = []
    for top in SUBPACKAGES:
        for init in sorted((ROOT / top).rglob("__init__.py")):
            parts = init.parent.relative_to(ROOT).parts
            found.append(".".join(("squeezelstm",) + parts))
    return found


def test_every_package_folder_is_listed_in_pyproject():
    # setuptools installs only the packages listed: a new sub-package left out is missing from the wheel
    assert sorted(_on_disk()) == sorted(_listed())


@pytest.mark.parametrize("name", _on_disk())
def test_subpackage_installed(name):
    mod = importlib.import_module(name)
    assert pathlib.Path(mod.__file__).name == "__init__.py"


def test_bare_folder_names_not_importable():
    # pytest runs with --import-mode=importlib, so the repo root is not on sys.path:
    # a bare `import search` must fail, as it does for a user of the installed package.
    for name in SUBPACKAGES:
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(name)
