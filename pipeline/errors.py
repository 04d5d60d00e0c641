"""User-facing errors of the pipeline: the project's one model (common/errors.py) plus the pipeline's
own kinds. The CLI prints `error: <message>` on one line and exits non-zero for these (common.cli);
anything else is a bug and keeps its traceback."""
from common.errors import ConfigError, UserError

# The pipeline's name for the base class, kept so that `except PipelineError` and existing imports
# read as before; it is the same class as UserError, not a second one.
PipelineError = UserError

__all__ = ["ConfigError", "PipelineError", "SinkError", "SourceError", "UserError"]


class SourceError(UserError):
    """A source that cannot be opened or read (missing file, broken video, dead camera)."""


class SinkError(UserError):
    """An output that cannot be written (permissions, full disk)."""
