"""docs/plugin-hooks.md documents every hookspec with its real signature, and no other hook.

Modelled on datasette's ``test_plugin_hooks_are_documented``: a hook added, renamed or
re-typed in ``easyfaas.plugin.hookspecs`` fails here until the page follows.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from easyfaas.plugin import PROJECT_NAME, hookspecs

DOC = Path(__file__).resolve().parents[2] / "docs" / "plugin-hooks.md"

_DEF_LINE = re.compile(r"^def (easyfaas_\w+)\(.*$", re.MULTILINE)
_NAME = re.compile(r"\beasyfaas_\w+")
#: ``easyfaas_*`` words the page may use that are not hooks: plugin packages
#: (``easyfaas_trigger_http``), the runner's wire module, the pytest fixture.
_NOT_HOOKS = re.compile(r"easyfaas_(?:trigger|runtime|sandbox|storage)_\w+|easyfaas_(?:wire|runner|engine)")


def _hookspecs() -> dict[str, Callable[..., Any]]:
    # pluggy marks a spec by setting "<project>_spec" on the function.
    marker = f"{PROJECT_NAME}_spec"
    return {name: fn for name, fn in vars(hookspecs).items() if inspect.isfunction(fn) and hasattr(fn, marker)}


HOOKS = _hookspecs()


@functools.cache
def _doc() -> str:
    return DOC.read_text(encoding="utf-8")


class _Text:
    """An annotation printed as written: hookspecs' annotations are strings (PEP 563)."""

    def __init__(self, annotation: Any) -> None:
        self.text = annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)

    def __repr__(self) -> str:
        return self.text


def _def_line(name: str, fn: Callable[..., Any]) -> str:
    """``def name(args) -> ret:`` exactly as it reads in hookspecs.py."""
    sig = inspect.signature(fn)
    params = [
        p if p.annotation is p.empty else p.replace(annotation=_Text(p.annotation)) for p in sig.parameters.values()
    ]
    ret = sig.empty if sig.return_annotation is sig.empty else _Text(sig.return_annotation)
    return f"def {name}{sig.replace(parameters=params, return_annotation=ret)}:"


def test_hookspecs_are_found() -> None:
    # Guards the parametrized tests below against passing vacuously.
    assert HOOKS, f"no function in {hookspecs.__name__} carries the {PROJECT_NAME}_spec marker"


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_hook_is_documented_with_its_signature(name: str) -> None:
    expected = _def_line(name, HOOKS[name])
    documented = [m.group(0) for m in _DEF_LINE.finditer(_doc()) if m.group(1) == name]
    assert documented, f"{name} is missing from {DOC.name}; document it with:\n{expected}"
    for line in documented:
        assert line == expected, f"{DOC.name} documents {name} as\n  {line}\nbut hookspecs.py has\n  {expected}"


def test_doc_mentions_only_real_hooks() -> None:
    mentioned = {word for word in _NAME.findall(_doc()) if not _NOT_HOOKS.fullmatch(word)}
    unknown = sorted(mentioned - set(HOOKS))
    assert not unknown, f"{DOC.name} mentions hooks that {hookspecs.__name__} does not define: {unknown}"


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_hookspec_says_which_process_calls_it(name: str) -> None:
    doc = inspect.getdoc(HOOKS[name]) or ""
    assert "controller" in doc or "funclet" in doc, f"{name}'s docstring must say which process calls it"
