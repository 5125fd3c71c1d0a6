"""How stock `mergekit-yaml` finds `model_swarms`: a lazy import hook (part of mergekit-swarm).

mergekit has no plugin discovery, so `mergekit_swarm.pth` (at the root of site-packages)
imports this small stand-alone module at interpreter start-up and calls `install()`. It
puts a finder at the front of `sys.meta_path` and does nothing else: it imports neither
torch, nor mergekit, nor the `mergekit_swarm` package. When, and only when, a program
imports `mergekit.merge_methods` or `mergekit.scripts.run_yaml`, the module loads
normally and `mergekit_swarm.mergekit_plugin` then registers the `model_swarms` method /
teaches `mergekit-yaml` to run swarm recipes. A failure there is a warning, never a
failure of the program importing mergekit.

MERGEKIT_SWARM_DISABLE_HOOK=1 (any value but empty, 0, false, no) skips the .pth line.
"""

import sys

# No typing, no importlib.abc, no threading: this runs in every Python start-up of the
# environment, and importlib.abc + typing alone would cost ~45 ms.

# module name -> function of mergekit_swarm.mergekit_plugin to call once it is loaded
WATCHED = {
    "mergekit.merge_methods": "register_method",
    "mergekit.scripts.run_yaml": "extend_mergekit_yaml",
    "mergekit.scripts.multimerge": "extend_mergekit_multi",
}


def _apply(name, module):
    plugin = sys.modules.get("mergekit_swarm.mergekit_plugin")
    if plugin is not None and not hasattr(plugin, "PLUGIN_READY"):
        return  # the plugin itself is importing mergekit right now; it applies itself when done
    try:
        from mergekit_swarm import mergekit_plugin

        getattr(mergekit_plugin, WATCHED[name])(module)
    except Exception as exc:  # never break a program that merely imports mergekit
        import warnings

        warnings.warn(f"mergekit-swarm could not extend {name} ({type(exc).__name__}: {exc})", stacklevel=2)


class _PatchingLoader:
    """Runs the real loader, then our patch on the freshly executed module."""

    def __init__(self, inner, name):
        self.inner, self.name = inner, name

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        self.inner.exec_module(module)
        _apply(self.name, module)

    def __getattr__(self, attr):  # get_resource_reader, is_package, ... of the real loader
        return getattr(self.inner, attr)


class MergekitFinder:
    """Finds watched mergekit modules with the other finders and wraps their loader."""

    def __init__(self):
        self._searching = set()  # re-entrancy guard: finders that ask each other must not recurse

    def find_spec(self, fullname, path, target=None):
        if fullname not in WATCHED or fullname in self._searching:
            return None
        self._searching.add(fullname)
        try:
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                        spec.loader = _PatchingLoader(spec.loader, fullname)
                    return spec
            return None
        finally:
            self._searching.discard(fullname)


def install():
    """Arm the hook (idempotent); patch watched modules that are already imported."""
    if not any(type(f).__name__ == "MergekitFinder" for f in sys.meta_path):
        sys.meta_path.insert(0, MergekitFinder())
    for name in WATCHED:
        module = sys.modules.get(name)
        spec = getattr(module, "__spec__", None)
        # a module still executing is patched by its loader when it finishes (if it is ours)
        if spec is not None and not getattr(spec, "_initializing", False):
            _apply(name, module)
