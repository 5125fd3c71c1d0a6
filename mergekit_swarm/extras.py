"""Optional dependencies (the package's extras) and the one error a missing one gives."""

from __future__ import annotations

import importlib
from types import ModuleType

from mergekit_swarm.errors import ConfigError


def require(module: str, extra: str, purpose: str, error: type[Exception] = ConfigError) -> ModuleType:
    """Import `module`, or raise `error`: "<purpose> needs the '<module>' package: pip install ..."."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise error(f"{purpose} needs the {module!r} package: pip install 'mergekit-swarm[{extra}]'") from None
