"""Integration health as plugins report it to the host and the host shows it to operators."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel

CredentialsState = Literal["valid", "invalid", "unchecked"]


class CredentialsCheck(BaseModel):
    state: CredentialsState
    checked_at: datetime | None = None
    #: A message a store admin understands; never contains a secret.
    error: str | None = None
