"""Settings fields every helpdesk plugin's settings API shares, so the rule is written once."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, StrictBool


def _no_mirror_yet(value: bool | None) -> bool | None:
    if value:
        raise ValueError("the note mirror is not available yet: send false or leave mirror_messages out")
    return value


#: The contract's ``mirror_messages`` (issue #15's note mirror is not built yet): ``false`` is
#: accepted, ``true`` refused with a message that says so.
MirrorMessages = Annotated[StrictBool | None, AfterValidator(_no_mirror_yet)]
