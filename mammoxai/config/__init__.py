"""Settings: one typed model loaded from TOML plus ``MAMMOXAI_*`` environment variables."""

from .loading import SettingsError, load_settings
from .settings import (
    PROFILE_METHODS,
    PROFILE_PARAMS,
    PROFILE_QUALITY_STEPS,
    DestinationSettings,
    ExplainerSettings,
    ModelSettings,
    NodeSettings,
    OutputSettings,
    Settings,
    TlsSettings,
)

__all__ = [
    "PROFILE_METHODS", "PROFILE_PARAMS", "PROFILE_QUALITY_STEPS", "DestinationSettings", "ExplainerSettings", "ModelSettings",
    "NodeSettings", "OutputSettings", "Settings", "SettingsError", "TlsSettings", "load_settings",
]
