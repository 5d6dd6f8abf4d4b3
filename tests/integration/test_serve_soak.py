"""A 20-second soak of the real `rotmnist serve` (the soak benchmark, shortened): mixed load, two promotions.

The same code as the 5-minute benchmark: a subprocess server on a throwaway SQLite store with the template
champion, 16 requests in flight over batches, single digits, uploads and malformed bodies, and a new champion
every 7 s. The latency goal is the benchmark's to judge on a quiet machine; here the answers, the reloads and
a loose bound on memory are checked.
"""

from __future__ import annotations

import pytest

from tests.support.soak import soak

pytestmark = pytest.mark.slow  # a registered model, a server subprocess and 20 s of load: 40-60 s

SECONDS, PROMOTE_EVERY, WINDOW = 20, 7, 5


@pytest.fixture(scope="module")
def report(tmp_path_factory, empty_store):
    return soak(tmp_path_factory.mktemp("soak"), SECONDS, 16, PROMOTE_EVERY, WINDOW, empty_store=empty_store)


def test_no_request_gets_a_5xx_or_goes_unanswered(report):
    assert report.requests > 1000
    assert report.server_errors == 0 and report.unanswered == 0
    assert report.log_errors == []


def test_every_kind_of_request_is_answered_as_documented(report):
    statuses = report.statuses()
    assert all(sum(counts.values()) > 0 for counts in statuses.values()), statuses  # every request of the mix sent
    assert set(report.by_kind()) == {"batch", "single", "upload", "malformed"}
    for name, counts in statuses.items():
        expected = {400, 413, 415, 422} if name.startswith("malformed") else {200}
        assert set(counts) <= expected, (name, counts)
    assert report.wrong == 0  # the right digits, and each malformed body its own 4xx


def test_both_promotions_are_served_in_order(report):
    assert [v for _, v in report.promoted] == ["2", "3"]
    assert list(report.seen) == ["1", "2", "3"]  # first seen in this order
    assert all(report.seen[v] > t for t, v in report.promoted)  # no answer names a version before its promotion
    assert report.logged_reloads == 2


def test_windows_add_up_and_memory_stays_bounded(report):
    assert [(w.start, w.end) for w in report.windows][:3] == [(0, 5), (5, 10), (10, 15)]
    assert report.windows[-1].end >= SECONDS
    assert sum(w.requests for w in report.windows) == report.requests
    assert all(w.requests > 0 for w in report.windows)
    assert report.rss_growth < 0.5  # loose: a busy 2-core machine; the benchmark's goal is 10 %
