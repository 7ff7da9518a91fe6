"""The error every layer may raise for a bad setting; it imports nothing from ``awm``.

It lives below both :mod:`awm.config` (which validates configs) and :mod:`awm.dist` (which
validates the device and the rendezvous timeout), so neither has to import the other for it.
"""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A configuration value is unknown or invalid; the message says which and what is valid.

    ``argument`` names a command-line positional (``SRC_DIR``) the key comes from: the message then
    names the argument the user typed, not a config key they never wrote.
    """

    def __init__(self, key: str, value: Any, valid: str, argument: str | None = None):
        self.key, self.value, self.valid, self.argument = key, value, valid, argument
        what = f"argument {argument}" if argument else f"config key '{key}'"
        super().__init__(f"{what}: got {value!r}; valid: {valid}")
