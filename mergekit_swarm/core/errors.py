"""Errors a user can act on. The CLI prints them as one line and exits non-zero."""


class SwarmError(Exception):
    """Base class: the message names the file, key or tensor at fault."""


class ConfigError(SwarmError):
    """The recipe (YAML) is invalid."""


class ExpertError(SwarmError):
    """An expert or base model cannot be used (missing, incompatible, unsafe format)."""


class UtilityError(SwarmError):
    """A utility cannot be built or failed under --fail-fast."""


class OutputError(SwarmError):
    """The output folder cannot be written or resumed."""


class WorkerError(SwarmError):
    """A distributed evaluation worker could not start, or died more often than allowed."""
