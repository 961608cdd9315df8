"""The one way to say a config is wrong, on both sides of the launch.

The driver raises it before anything is written or any rank starts, and prints it as one line
(``error: key: message``, exit 2); a rank rechecking the same rule (train/spec/rules.py)
raises the same error from the same function, so the two can never word or decide it apart.
"""

from __future__ import annotations

EXIT_CONFIG_ERROR = 2


class ConfigError(ValueError):
    """A value the run cannot take: names the config key and says what is allowed."""

    exit_code = EXIT_CONFIG_ERROR

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message
