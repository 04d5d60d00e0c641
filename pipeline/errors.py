"""User-facing errors. The CLI prints `error: <message>` on one line and exits non-zero for these;
anything else is a bug and keeps its traceback."""


class PipelineError(Exception):
    """Base class: a problem with the user's input, config, source or disk, not with the code."""


class ConfigError(PipelineError):
    """A wrong config key or value."""


class SourceError(PipelineError):
    """A source that cannot be opened or read (missing file, broken video, dead camera)."""


class SinkError(PipelineError):
    """An output that cannot be written (permissions, full disk)."""
