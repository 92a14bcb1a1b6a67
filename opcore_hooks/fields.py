"""Settings fields every helpdesk plugin's settings API shares, so the rule is written once."""

from __future__ import annotations

from pydantic import StrictBool

#: The contract's ``mirror_messages``: whether a store's claim messages become private notes on
#: the claim's ticket (the note mirror, CONTRACT.md). ``true`` or ``false`` only (``"yes"`` or
#: ``1`` are refused, naming the field); ``null`` or leaving it out keeps the stored value.
#: Storage and views keep it as a plain ``bool``, ``False`` until a store turns it on.
MirrorMessages = StrictBool | None
