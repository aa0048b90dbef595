"""The installed package must hold every code folder as a sub-package (a missing one is silently dropped)."""

import importlib
import pathlib

import pytest

SUBPACKAGES = ["search", "spaces", "trainers", "dashboards"]


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_subpackage_installed(name):
    mod = importlib.import_module(f"squeezelstm.{name}")
    assert pathlib.Path(mod.__file__).name == "__init__.py"


def test_bare_folder_names_not_importable():
    # pytest runs with --import-mode=importlib, so the repo root is not on sys.path:
    # a bare `import search` must fail, as it does for a user of the installed package.
    for name in SUBPACKAGES:
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(name)
