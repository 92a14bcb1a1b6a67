"""Each store's settings for one helpdesk, as this process last read them.

Settings change rarely and are read on every claim, so each process keeps them, decrypted, with
a snapshot of their fields. A cached *yes* is safe: taking a claim's turn checks the snapshot
against Redis in the same step (``ledger.py``), so a change is used at the next request. A cached
*no* is never trusted: a store that connects this helpdesk must get its next claim here. It is
read afresh on every claim, but not in a round trip of its own: within a dispatch the read rides
on the dispatch's first Redis command (``prefetching``), and nothing read outlives the dispatch.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .ledger import Snapshot, fields_of, snapshot

if TYPE_CHECKING:
    from ..store import PinnedRedis
    from .helpdesk import Helpdesk


class StoreCache:
    def __init__(self, redis: PinnedRedis, helpdesk: Helpdesk[Any]) -> None:
        self.redis, self.helpdesk = redis, helpdesk
        self._stores: dict[str, tuple[Snapshot, Any]] = {}
        #: Per thread: the settings read that rides on the current dispatch's first command.
        self._prefetch = threading.local()
        self._read = redis.register_script("return redis.call('HGETALL', KEYS[1])")

    def get(self, store_id: str, *, fresh: bool = False) -> tuple[Snapshot, Any]:
        """The store's settings and their snapshot; from the cache unless ``fresh``. The settings
        are None when the store never configured this helpdesk."""
        cached = None if fresh else self._stores.get(store_id)
        if cached is not None:
            return cached
        raw = self.redis.hgetall(self.helpdesk.settings_key(store_id))
        return self.remember(store_id, {k.decode(): v.decode() for k, v in raw.items()})

    def remember(self, store_id: str, fields: dict[str, str]) -> tuple[Snapshot, Any]:
        """Keep ``fields`` as the store's settings (decrypted by the helpdesk's ``load_store``)."""
        entry = (snapshot(fields), self.helpdesk.load_store(store_id, fields) if fields else None)
        self._stores[store_id] = entry
        return entry

    def forget(self) -> None:
        self._stores.clear()

    def uses(self, store_id: str, *, enabled: bool) -> bool:
        """Whether the store uses this helpdesk (and has it enabled, with ``enabled``)."""
        return self.find(store_id, lambda config: not enabled or self.helpdesk.enabled(config))

    def find(self, store_id: str, wanted: Callable[[Any], bool]) -> bool:
        """Whether the store's settings exist and are ``wanted``. A cached no is checked afresh,
        by the read ``prefetching`` sent along with this dispatch when there is one."""
        for fresh in (False, True):
            found = self._prefetched(store_id) if fresh else None
            _, config = found if found is not None else self.get(store_id, fresh=fresh)
            if config is not None and wanted(config):
                return True
        return False

    @contextmanager
    def prefetching(self, store_id: str | None) -> Iterator[None]:
        """Within a dispatch (a ``write_behind`` block): when the cache cannot say that
        ``store_id`` uses this helpdesk (never read, or it did not), send the read of its
        settings with the dispatch's first Redis command, so ``uses`` costs no round trip of its
        own. Most stores use one helpdesk: every other plugin's check of every claim was a round
        trip (docs/BENCHMARKS.md, issue #14)."""
        cached = self._stores.get(store_id) if store_id is not None else None
        if store_id is None or (cached is not None and cached[1] is not None):
            yield
            return
        self._prefetch.pending = (store_id, self.redis.defer(
            self._read, keys=[self.helpdesk.settings_key(store_id)], args=[]))
        try:
            yield
        finally:
            self._prefetch.pending = None

    def _prefetched(self, store_id: str) -> tuple[Snapshot, Any] | None:
        """The store's settings as this dispatch's prefetch read them, once it has been sent;
        None when there is no such read (then the caller reads them itself)."""
        pending = getattr(self._prefetch, "pending", None)
        if pending is None or pending[0] != store_id or pending[1] is None or not pending[1].sent \
                or isinstance(pending[1].answer, Exception):
            return None
        self._prefetch.pending = None
        return self.remember(store_id, fields_of(pending[1].answer))
