"""The runners' shared modules: loadable from the runner directory on the bare standard library."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from easyfaas import runner_child, runner_support, wire


@pytest.mark.parametrize(
    ("module", "preload", "not_at_import"),
    [
        # Every Python runner loads it, the Python runner included: nothing that runner does not
        # load anyway (start-up time, and the memory of every sandbox a zygote forks). What
        # easyfaas_wire imports, it imports itself.
        (runner_support, "easyfaas_wire", {"typing", "threading", "subprocess", "traceback", "select", "selectors"}),
        (runner_child, "sys", {"typing"}),
    ],
    ids=["runner_support", "runner_child"],
)
def test_runner_modules_import_only_the_standard_library(
    tmp_path: Path, module: ModuleType, preload: str, not_at_import: set[str]
) -> None:
    # Runners import them as easyfaas_<name> from their directory, beside easyfaas_wire, inside
    # sandboxes that have no site-packages (see the runtimes' runner_files()).
    name = "easyfaas_" + module.__name__.rpartition(".")[2]
    for source in (module, wire):
        assert source.__file__ is not None
        (tmp_path / ("easyfaas_" + source.__name__.rpartition(".")[2] + ".py")).symlink_to(source.__file__)
    code = (
        f"import sys; sys.path.insert(0, {str(tmp_path)!r}); "
        f"import {preload}; before = set(sys.modules); "
        f"import {name}; "
        f"new = set(sys.modules) - before - {{{name!r}}}; "
        "bad = [m for m in new if m.split('.')[0] not in sys.stdlib_module_names]; "
        f"heavy = sorted(new & set({sorted(not_at_import)!r})); "
        "print(bad, heavy); sys.exit(1 if bad or heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
