"""The one error type the driver raises for bad input: it names the key and what is allowed."""

from __future__ import annotations


class ConfigError(Exception):
    """Bad input, caught before any worker starts; printed as one line, exit code 2."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key


EXIT_CONFIG_ERROR = 2
