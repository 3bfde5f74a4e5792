"""Writing an easyfaas plugin, in one page.

A plugin is a distribution that declares an entry point in one of the groups
``easyfaas.triggers``, ``easyfaas.runtimes``, ``easyfaas.sandboxes``, ``easyfaas.storage`` or
``easyfaas.queues``; the entry point's name is the word users write in the engine profile,
and its object is a module holding hook implementations::

    # pyproject.toml
    [project.entry-points."easyfaas.sandboxes"]
    jail = "easyfaas_sandbox_jail.plugin"

    # easyfaas_sandbox_jail/plugin.py
    from easyfaas.plugin import hookimpl
    from easyfaas_sandbox_jail.driver import JailSandbox   # subclass of easyfaas.interfaces.SandboxDriver

    @hookimpl
    def easyfaas_register_sandboxes(register):
        register.add_sandbox(JailSandbox)                  # JailSandbox.PLUGIN_NAME == "jail"

The class's ``PLUGIN_NAME`` must equal the entry point's name. Its constructor receives the
plugin's profile section as keyword arguments. Lifecycle hooks (``easyfaas_after_invoke``,
``easyfaas_instance_event``, ...) may be implemented in the same module; every hook is listed
with its signature in ``easyfaas.plugin.hookspecs`` and ``docs/plugin-hooks.md``.
A plugin imports only ``easyfaas.plugin``, ``easyfaas.interfaces``, ``easyfaas.models`` and
``easyfaas.errors``: never another plugin. Code that several plugins need and core must not
carry (it would pull their dependencies into core) goes into a support library under
``libs/`` that each of them declares as a dependency, e.g. ``easyfaas-nats``.
"""

from __future__ import annotations

import pluggy

__all__ = ["PROJECT_NAME", "Registry", "hookimpl", "hookspec"]

PROJECT_NAME = "easyfaas"
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

from easyfaas.plugin._registry import Registry  # noqa: E402  (after the markers it does not need)
