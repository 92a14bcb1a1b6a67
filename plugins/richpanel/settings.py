"""Process-wide settings of the Richpanel plugin (``OPCORE_RICHPANEL_*``), validated at start-up."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class RichpanelSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OPCORE_RICHPANEL_", extra="ignore")

    api_url: str = "https://api.richpanel.com"
    #: Requests allowed per API key in each window (Richpanel: 50 per 30 s).
    quota: int = Field(default=50, ge=1)
    window_seconds: float = Field(default=30.0, gt=0)
    #: Seconds before an unanswered request counts as lost.
    timeout_seconds: float = Field(default=10.0, gt=0)
    #: Domains allowed to frame the widget (Content-Security-Policy frame-ancestors).
    frame_ancestors: str = "https://*.richpanel.com https://richpanel.com"
