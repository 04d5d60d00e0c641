"""The one user-error model.

`UserError` is a problem with the user's input (arguments, config, files, cameras, disk), not with
the code: every CLI prints it as one `error: ...` line and exits non-zero (common.cli.run); anything
else is a bug and keeps its traceback. Subclasses say which input was wrong; callers that only want
to report an error catch `UserError`.
"""
from __future__ import annotations


class UserError(Exception):
    """Base class: bad input from the user, reported as one line without a traceback."""


class ConfigError(UserError, ValueError):
    """A wrong config key or value (also a ValueError: a bad value is one).

    `key` is the dotted name of the offending key relative to the settings object that raised it;
    the loader (common.config.build) prefixes the enclosing sections as the error passes through
    them, so the message names the key as the user writes it (e.g. `data.lr`).

        >>> str(ConfigError("must be >= 1, got 0", key="hidden").within("decoder"))
        'decoder.hidden must be >= 1, got 0'
    """

    def __init__(self, message: str, key: str = ""):
        self.detail, self.key = message, key
        super().__init__(f"{key} {message}" if key else message)

    def within(self, section: str) -> ConfigError:
        """The same error seen from the enclosing `section` (keyless errors already say where)."""
        if not self.key or not section:
            return self
        return ConfigError(self.detail, f"{section}.{self.key}")
