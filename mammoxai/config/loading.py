"""Load :class:`~mammoxai.config.settings.Settings` with start-up errors that name the key."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..errors import MammoxaiError
from .settings import _TOML_DATA, Settings


class SettingsError(MammoxaiError, ValueError):
    """Invalid settings; the message names each offending key and what is allowed."""


def _describe(error: dict[str, Any], source: str) -> str:
    key = ".".join(str(p) for p in error["loc"]) or "(top level)"
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown key"
        parent = _section_model(error["loc"][:-1])
        if parent is not None:
            message += f" (allowed: {', '.join(sorted(parent.model_fields))})"
    return f"{source}: {key}: {message}"


def _section_model(loc: tuple[Any, ...]):
    model: Any = Settings
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return None
        model = field.annotation
    return model if hasattr(model, "model_fields") else None


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Read ``path`` (TOML), apply ``MAMMOXAI_*`` environment variables, then ``overrides``.

    Raises :class:`SettingsError` with one line per invalid key.
    """
    data: dict[str, Any] = {}
    source = "settings"
    if path is not None:
        path = Path(path)
        source = str(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SettingsError(f"{path}: settings file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{path}: not valid TOML: {exc}") from None
    token = _TOML_DATA.set(data)
    try:
        settings = Settings(**overrides)
        settings.explainers.methods()
        return settings
    except ValidationError as exc:
        raise SettingsError("\n".join(_describe(e, source) for e in exc.errors())) from None
    except ValueError as exc:
        raise SettingsError(f"{source}: {exc}") from None
    finally:
        _TOML_DATA.reset(token)
