"""Optional dependencies (the package's extras) and the one error a missing one gives."""

from __future__ import annotations

import importlib
from types import ModuleType

from mergekit_swarm.core.errors import ConfigError


def require(
    module: str, extra: str, purpose: str, error: type[Exception] = ConfigError, *, known_as: str | None = None
) -> ModuleType:
    """Import `module`, or raise `error`: "<purpose> needs the '<module>' package: pip install ..."
    (`known_as`: how users know the package, when its import name says little)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        what = f"{known_as} (the {module!r} package)" if known_as else f"the {module!r} package"
        raise error(f"{purpose} needs {what}: pip install 'mergekit-swarm[{extra}]'") from None
