"""Timing one page through Django's test client, the way the page benches do."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PageTiming:
    samples: list[float]  # seconds, one per request
    response: Any  # the last response, for its status and content
    queries: int  # database queries of one request

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


def time_page(client: Any, url: str, rounds: int) -> PageTiming:
    """One warming request (query plans, template cache), `rounds` timed ones, then one more that
    counts its queries."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client.get(url)
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        client.get(url)
        samples.append(time.perf_counter() - started)
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url)
    return PageTiming(samples, response, len(queries))
