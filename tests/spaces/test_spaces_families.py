"""The family table: torch-free, and the one source the cells, trainer config, space files and dashboards read."""

import subprocess
import sys
import typing

import pytest

from squeezelstm.spaces.families import (
    FAMILY_ARG_NAMES,
    FAMILY_ARGS,
    FAMILY_NAMES,
    FAMILY_TABLE,
    ROUTINGS,
    derive_family_args,
)

# Modules that read the table and load no torch of their own (a report, the space-file checks). The
# subprocess imports each with the package ``__init__`` of ``search``, ``search.space`` and
# ``dashboards`` skipped (their eager imports, such as the search runner's, are another matter), so
# only the module and what it imports count.
TORCH_FREE = (
    "squeezelstm.spaces.families",
    "squeezelstm.search.space._file",
    "squeezelstm.dashboards.tables",
)
_IMPORT_ALONE = """
import importlib.util, sys, types
for name in ("squeezelstm.search", "squeezelstm.search.space", "squeezelstm.dashboards"):
    package = types.ModuleType(name)
    package.__path__ = list(importlib.util.find_spec(name).submodule_search_locations)
    sys.modules[name] = package
import {module}
print(sorted({{"torch", "numpy"}} & set(sys.modules)), sorted(m for m in sys.modules if m.startswith("squeezelstm.spaces")))
"""


@pytest.mark.parametrize("module", TORCH_FREE)
def test_imports_without_torch(module):
    code = _IMPORT_ALONE.format(module=module)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    heavy, spaces = result.stdout.strip().splitlines()[-1].split("] [")
    assert "torch" not in heavy, result.stdout
    assert spaces == "'squeezelstm.spaces', 'squeezelstm.spaces.families']", result.stdout
    if module == "squeezelstm.spaces.families":
        assert heavy == "[", result.stdout  # not even numpy


def test_the_classes_are_the_tables():
    from squeezelstm.spaces import FAMILIES

    assert tuple(FAMILIES) == FAMILY_NAMES
    for name, family in FAMILY_TABLE.items():
        cls = FAMILIES[name]
        assert (cls.__name__, cls.family) == (family.class_name, name)
        # every table default is what the class fills in when the argument is left out
        required = {a.name: (a.choices[0] if a.choices else 0.5 if a.kind == "float" else 2) for a in family.args
                    if a.default is None}
        assert cls.check_args(8, 8, 1, **required) == {**required, **family.defaults}


def test_trainer_config_has_a_typed_field_for_every_family_argument():
    from squeezelstm.trainers.config import ModelConfig

    hints = typing.get_type_hints(ModelConfig)
    for family in FAMILY_TABLE.values():
        for arg in family.args:
            want = {"int": int, "float": float, "choice": str}[arg.kind]
            assert want in typing.get_args(hints[arg.name]), (arg.name, hints[arg.name])
            if arg.per_layer:
                assert tuple[want, ...] in typing.get_args(hints[arg.name]), arg.name
    assert set(FAMILY_ARG_NAMES) == {a for args in FAMILY_ARGS.values() for a in args}


def test_space_file_keys_follow_the_table():
    from squeezelstm.search.space._file import FAMILY_KEYS, FAMILY_REQUIRED, KNOWN_FAMILIES

    assert KNOWN_FAMILIES == FAMILY_NAMES
    assert FAMILY_KEYS["routed"] == ("num_cells", "num_cells_fraction", "routing")
    assert FAMILY_REQUIRED["factorized"] == (("rank", ("rank", "rank_fraction")),)
    assert FAMILY_KEYS["lstm"] == () and FAMILY_KEYS["restricted"] == ("share",)
    assert FAMILY_KEYS["hidden"] == ("gate_hidden", "gate_hidden_fraction", "prune_sparsity", "grow_phases", "prune_phases")


def test_dashboards_read_the_table():
    from squeezelstm.dashboards.figures import FAMILY_COLORS
    from squeezelstm.dashboards.tables import FAMILY_ARGS as REPORT_ARGS

    assert REPORT_ARGS is FAMILY_ARGS
    assert tuple(FAMILY_COLORS) == FAMILY_NAMES and len(set(FAMILY_COLORS.values())) == len(FAMILY_NAMES)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_derived_arguments_are_valid_for_the_family(family):
    from squeezelstm.spaces import validate_family_args

    raw = {a.name: (a.choices[-1] if a.choices else 0.3 if a.kind == "float" else 7) for a in FAMILY_TABLE[family].args}
    for m, n, layers in ((12, 18, 1), (10, 24, 3), (7, 5, 2)):
        args = derive_family_args(family, raw, m, n, layers)
        assert set(args) == set(FAMILY_ARGS[family])
        validate_family_args(family, m, n, layers, **args)
    assert ROUTINGS == FAMILY_TABLE["routed"].args[1].choices
