"""Every ``RequestObserver`` of the gateway behind one: the lifecycle calls a single observer.

Metrics, the request log (and traces) each see every request entry; adding one is one line in
``Gateway.__init__`` (``observers.add(...)``).  An observer that raises is a bug of ours: it is
logged once per observer and never stops the others, nor fails the request it describes.
"""

from __future__ import annotations

import logging

from streamgw.engine.lifecycle import RequestEntry, RequestObserver

__all__ = ["Observers"]

log = logging.getLogger("streamgw")


class Observers:
    """A ``RequestObserver`` that hands each entry to every observer added, in order."""

    __slots__ = ("_failed", "observers")

    def __init__(self, *observers: RequestObserver) -> None:
        self.observers: list[RequestObserver] = list(observers)
        self._failed: set[int] = set()

    def add(self, observer: RequestObserver) -> None:
        """One more observer (it sees the requests that open from now on)."""
        self.observers.append(observer)

    def opened(self, entry: RequestEntry) -> None:
        for observer in self.observers:
            try:
                observer.opened(entry)
            except Exception:
                self._report(observer)

    def ended(self, entry: RequestEntry) -> None:
        for observer in self.observers:
            try:
                observer.ended(entry)
            except Exception:
                self._report(observer)

    def _report(self, observer: RequestObserver) -> None:
        if id(observer) not in self._failed:
            self._failed.add(id(observer))
            log.exception("request observer %s failed (logged once)", type(observer).__name__)
