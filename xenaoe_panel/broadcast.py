"""Events to open pages, over the channel layer, sent after the transaction that caused them commits
(so a page that re-reads the database on receiving one sees the same state)."""
from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

logger = logging.getLogger(__name__)


def send_on_commit(groups: list[str], event: dict, what: str) -> None:
    """group_send `event` to every group once the current transaction commits (at once outside
    one). A failure is logged and swallowed: a page that misses an event catches up on reload,
    and the operation that caused it must not fail for it."""

    def send() -> None:
        layer = get_channel_layer()
        if layer is None:
            return
        try:
            for group in groups:
                async_to_sync(layer.group_send)(group, event)
        except Exception:
            logger.warning("could not publish %s", what, exc_info=True)

    transaction.on_commit(send)
