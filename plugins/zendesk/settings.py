"""Process-wide settings of the Zendesk plugin (``OPCORE_ZENDESK_*``), validated at start-up."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ZendeskSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OPCORE_ZENDESK_", extra="ignore")

    #: The API base; ``{subdomain}`` is replaced by each store's subdomain.
    api_url: str = "https://{subdomain}.zendesk.com"
    #: Requests per account per window before Zendesk says otherwise. Zendesk's plan sets the real
    #: budget (200 to 2,500 a minute) and every answer advertises it: pacing follows it from then.
    quota: int = Field(default=200, ge=1)
    window_seconds: float = Field(default=60.0, gt=0)
    #: Seconds before an unanswered request counts as lost.
    timeout_seconds: float = Field(default=10.0, gt=0)
    #: Domains allowed to frame the widget (Content-Security-Policy frame-ancestors).
    #: A sidebar app's own page is served from zdusercontent.com inside zendesk.com, and CSP
    #: checks every ancestor, so both are needed for the panel to show in an app.
    frame_ancestors: str = "https://*.zendesk.com https://*.zdusercontent.com"

    @field_validator("api_url")
    @classmethod
    def _has_subdomain(cls, value: str) -> str:
        if "{subdomain}" not in value:
            raise ValueError("OPCORE_ZENDESK_API_URL must hold {subdomain}, e.g. https://{subdomain}.zendesk.com")
        return value.rstrip("/")

    def base_url(self, subdomain: str) -> str:
        return self.api_url.replace("{subdomain}", subdomain)
