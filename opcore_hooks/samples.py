"""Sample events as Order Protection sends them (CONTRACT.md's example): for the demo and the tests.

Kept apart from ``opcore_hooks.testing`` (a pytest plugin) so the demo runs without pytest.
"""

from __future__ import annotations

from typing import Any

CLAIM_CREATED: dict[str, Any] = {
    "id": "3b6f0c1e-0000-4000-8000-000000000001",
    "topic": "claim.created",
    "created_at": "2026-11-27T10:00:00Z",
    "body": {
        "store_id": "store_123",
        "claim_id": "cm6v2zdt10002j20vqs7f74hc",
        "claim_number": "OP-1042",
        "order_id": "order-1",
        "source_order_id": "100",
        "created_at": "2026-11-27T09:59:58Z",
        "claim_description": "Item arrived damaged",
        "claim_type": "DAMAGED",
        "claim_state": "NEW",
        "items": [{"product_id": "p1", "variant_id": "v1", "sku": "SKU123", "item_id": "i1",
                   "item_name": "Wireless Mouse", "quantity": 1}],
        "customer": {"email": "ana@example.com", "first_name": "Ana", "last_name": "Lima",
                     "phone": "+15551230000"},
        "order": {"order_number": "#1001", "currency": "USD", "placed_at": "2026-11-20T08:00:00Z",
                  "line_items": [{"item_id": "i1", "item_name": "Wireless Mouse", "sku": "SKU123",
                                  "quantity": 1, "unit_price": "24.99"}],
                  "subtotal": "24.99", "shipping": "4.99", "tax": "2.10", "total": "32.08"},
    },
}

#: A message of that claim's Order Protection conversation (CONTRACT.md, "Note mirror").
MESSAGE_CREATED: dict[str, Any] = {
    "id": "3b6f0c1e-0000-4000-8000-000000000002",
    "topic": "message.created",
    "created_at": "2026-11-27T10:05:00Z",
    "body": {
        "store_id": "store_123",
        "claim_id": "cm6v2zdt10002j20vqs7f74hc",
        "message_id": "msg-1",
        "message": "Hi, the mouse came in a crushed box <photo attached> & the scroll wheel is stuck.",
        "sender_type": "customer",
        "author_name": "Ana Lima",
        "created_at": "2026-11-27T10:05:00Z",
    },
}
