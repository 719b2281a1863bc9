"""Typed readers for settings that come from the environment.

Every helper fails loudly: a value that cannot be understood stops start-up with a
message that names the variable and says what it expected, rather than letting a
typo silently fall back to a default in production.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConfigError(ImproperlyConfigured):
    """A configuration value is missing or malformed."""


def _raw(name: str) -> str | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return value.strip()


def env_str(name: str, default: str) -> str:
    value = _raw(name)
    return default if value is None or value == "" else value


def env_optional(name: str) -> str | None:
    """A string that may be absent; an empty value counts as absent."""
    value = _raw(name)
    return value or None


def env_bool(name: str, default: bool) -> bool:
    value = _raw(name)
    if value is None:
        return default
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(
        f"{name}={value!r} is not a boolean: use one of 1/0, true/false, yes/no, on/off."
    )


def env_int(
    name: str, default: int, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    value = _raw(name)
    if value is None or value == "":
        result = default
    else:
        try:
            result = int(value)
        except ValueError:
            raise ConfigError(f"{name}={value!r} is not a whole number.") from None
    _check_range(name, result, minimum, maximum)
    return result


def env_float(
    name: str, default: float, *, minimum: float | None = None, maximum: float | None = None
) -> float:
    value = _raw(name)
    if value is None or value == "":
        result = default
    else:
        try:
            result = float(value)
        except ValueError:
            raise ConfigError(f"{name}={value!r} is not a number.") from None
    _check_range(name, result, minimum, maximum)
    return result


def _check_range(name: str, value: float, minimum: float | None, maximum: float | None) -> None:
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name}={value} is below the minimum of {minimum}.")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name}={value} is above the maximum of {maximum}.")


def env_list(name: str, default: list[str]) -> list[str]:
    """A comma-separated list; blanks are dropped."""
    value = _raw(name)
    if value is None:
        return list(default)
    return [item.strip() for item in value.split(",") if item.strip()]


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env_str(name, default).lower()
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of: {', '.join(choices)}.")
    return value


def env_secret(name: str, *, generated_file: Path, min_length: int = 32) -> str:
    """A secret from NAME, from the file named by NAME_FILE, or generated once.

    The generated fallback is what makes a fresh checkout run with no configuration;
    it is kept under var/ so that restarts keep sessions, tokens and API keys valid.
    Deployments with several hosts must set the variable so that all hosts agree.
    """
    value = env_optional(name)
    file_name = env_optional(f"{name}_FILE")
    if value and file_name:
        raise ConfigError(f"Set either {name} or {name}_FILE, not both.")
    if file_name:
        try:
            value = Path(file_name).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{name}_FILE={file_name!r} cannot be read: {exc}.") from None
    if value is None:
        value = _generated_secret(generated_file)
    if len(value) < min_length:
        raise ConfigError(f"{name} must be at least {min_length} characters long.")
    return value


def _generated_secret(path: Path) -> str:
    if path.exists():
        # It may exist and still be empty: another process created it an instant ago.
        return _read_when_written(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    candidate = secrets.token_urlsafe(48)
    # O_EXCL: when web, worker and beat start together only one of them writes the
    # file; the others read what the winner wrote.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_when_written(path)
    with os.fdopen(fd, "w") as handle:
        handle.write(candidate)
    return candidate


def _read_when_written(path: Path) -> str:
    import time

    for _ in range(50):
        content = path.read_text().strip()
        if content:
            return content
        time.sleep(0.02)
    raise ConfigError(f"{path} exists but is empty; delete it to have a new secret generated.")
