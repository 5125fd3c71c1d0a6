"""`python`: a function the user names, called as f(model, tokenizer) -> float.

`function: my_utility.py:score` loads a file (relative to the recipe's folder);
`function: package.module:score` imports an installed module. This is the only code
a recipe can make us run, and it runs only because the user named it.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from mergekit_swarm.core.errors import ConfigError, UtilityError
from mergekit_swarm.core.protocols import CausalLM, Tokenizer
from mergekit_swarm.utilities.base import Split, Utility, UtilityConfig, register_utility


def load_function(spec: str) -> Callable:
    """Resolve `file.py:name` or `module:name` to the callable."""
    target, _, name = spec.rpartition(":")
    if target.endswith(".py"):
        module_spec = importlib.util.spec_from_file_location(f"mergekit_swarm_utility_{Path(target).stem}", target)
        if module_spec is None or module_spec.loader is None:
            raise UtilityError(f"cannot load utility file {target}")
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            raise UtilityError(f"utility file {target} failed to import: {type(exc).__name__}: {exc}") from None
    else:
        try:
            module = importlib.import_module(target)
        except Exception as exc:  # ImportError, or whatever the module raises while importing
            raise UtilityError(f"cannot import utility module {target!r}: {type(exc).__name__}: {exc}") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise UtilityError(f"{target} has no function {name!r}")
    return function


def _source_file(spec: str) -> Path | None:
    target = spec.rpartition(":")[0]
    if target.endswith(".py"):
        return Path(target)
    try:
        found = importlib.util.find_spec(target)  # imports the parent packages of a dotted name, not the module
    except (ImportError, ValueError):
        return None  # reported when the utility is built
    origin = getattr(found, "origin", None)
    return Path(origin) if origin and Path(origin).is_file() else None


class PythonUtility(Utility):
    def __init__(self, function: Callable):
        self.function = function

    def __call__(self, model: CausalLM, tokenizer: Tokenizer) -> float:
        value = self.function(model, tokenizer)
        if isinstance(value, bool):
            raise TypeError(f"utility returned a bool ({value}), expected a number")
        return float(value)


@register_utility
class PythonConfig(UtilityConfig):
    type: Literal["python"] = "python"
    function: str = Field(description="'file.py:function' (relative to the recipe) or 'module:function'.")
    test_function: str | None = Field(default=None, description="Optional function reported on the test side.")

    @field_validator("function", "test_function")
    @classmethod
    def _resolve_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        target, sep, name = value.rpartition(":")
        if not sep or not target or not name.isidentifier():
            raise ValueError(f"{value!r} must look like 'file.py:function' or 'module:function'")
        if target.endswith(".py"):
            path = Path(target).expanduser()
            base = (info.context or {}).get("base_dir")
            if not path.is_absolute() and base is not None:
                path = Path(base) / path
            if not path.is_file():
                raise ValueError(f"utility file {path} does not exist")
            return f"{path.resolve()}:{name}"
        return value

    def input_files(self) -> list[Path]:
        """The utility's source: the file it names, or the installed module's own file (found, not run)."""
        sources = [_source_file(spec) for spec in (self.function, self.test_function) if spec]
        return [source for source in sources if source is not None]

    def input_paths(self) -> list[Path]:
        targets = [s.rpartition(":")[0] for s in (self.function, self.test_function) if s]
        return [Path(t) for t in targets if t.endswith(".py")]

    def may_be_negative(self) -> bool:
        return True  # unknown: refused under a harmonic mean rather than failing every evaluation

    def build(self, split: Split, holdout: float = 0.0) -> Utility | None:
        if split not in ("dev", "test"):
            raise ConfigError(f"a python utility has no {split} part (swarm.holdout needs a utility of examples)")
        spec = self.function if split == "dev" else self.test_function
        return None if spec is None else PythonUtility(load_function(spec))
