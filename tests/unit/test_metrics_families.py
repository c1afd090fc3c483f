"""The metric families of the report's per-mount counters, evictions, tier moves and
under-store latencies; the histogram arithmetic behind them; latencies and errors as a
real local store records them; and the same numbers as ``shoal report`` shows and sums."""

from __future__ import annotations

import math
import os
import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from shoal.cli._report import render_report
from shoal.client._usage import summed_reports
from shoal.control._metrics import (
    LATENCY_BUCKETS,
    Counters,
    Histogram,
    UnderStoreTraffic,
    histogram_quantile,
    merge_histograms,
    merged_by_kind,
    report_metrics,
)
from shoal.control.ufs import REQUEST_KINDS, LocalStore


def histogram_of(seconds: list[float], bounds=LATENCY_BUCKETS) -> dict:
    h = Histogram(bounds)
    for s in seconds:
        h.observe_ns(round(s * 1e9))
    return h.snapshot()


BASE = {
    "worker": {"uptime": 5.0},
    "requests": 10,
    "file_requests": 4,
    "page_hits": 7,
    "page_misses": 5,
    "pages_located": 6,
    "pages_sent": 6,
    "bytes_sent": 4096,
    "pages_prefetched": 0,
    "ufs_reads": 3,
    "ufs_bytes": 8192,
    "store_full": 0,
    "pins_refused": 0,
    "ufs_requests_by_mount": {"/a": {"GET": 3}},
    "hit_ratio": 7 / 12,
    "mounts": 2,
    "published": {"files": 0},
    "metadata_entries": 1,
    "metadata_bytes": 100,
    "tiers": {},
}
GET_A = histogram_of([0.0002, 0.0004, 0.003, 0.2, 20.0])
NEW = {
    "by_mount": {
        "/a": {"page_hits": 4, "page_misses": 3, "bytes_short_circuit": 65536,
               "bytes_socket": 1000, "bytes_ufs": 196608},
        "/b": {"page_hits": 3, "page_misses": 2, "bytes_short_circuit": 0,
               "bytes_socket": 4096, "bytes_ufs": 131072},
    },
    "evictions": {"capacity": {"pages": 12, "bytes": 786432}, "ttl": {"pages": 1, "bytes": 10},
                  "quota": {"pages": 0, "bytes": 0}},
    "tier_moves": {"demoted": {"pages": 4, "bytes": 262144}, "promoted": {"pages": 1, "bytes": 9}},
    "ufs_latency": {"/a": {"GET": GET_A, "HEAD": histogram_of([0.0001])}, "/b": {}},
    "ufs_errors": {"/a": {"GET": 2, "HEAD": 0}, "/b": {"GET": 0}},
}  # fmt: skip


class ReportCollector:
    def __init__(self, report: dict):
        self.report = report

    def collect(self):
        return report_metrics(self.report)


def exposition(report: dict) -> dict[str, object]:
    """``{family name: family}`` of the text Prometheus would scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ReportCollector(report))
    text = generate_latest(registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(family) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}


# ------------------------------------------------------------------- families


def test_per_mount_families():
    got = exposition({**BASE, **NEW})
    assert got["shoal_mount_page_hits"].type == "counter"
    assert samples(got["shoal_mount_page_hits"]) == {
        ("shoal_mount_page_hits_total", (("mount", "/a"),)): 4,
        ("shoal_mount_page_hits_total", (("mount", "/b"),)): 3,
    }
    misses = samples(got["shoal_mount_page_misses"])
    assert misses[("shoal_mount_page_misses_total", (("mount", "/b"),))] == 2
    served = samples(got["shoal_mount_served_bytes"])
    assert served == {
        ("shoal_mount_served_bytes_total", (("mount", "/a"), ("path", "short_circuit"))): 65536,
        ("shoal_mount_served_bytes_total", (("mount", "/a"), ("path", "socket"))): 1000,
        ("shoal_mount_served_bytes_total", (("mount", "/b"), ("path", "short_circuit"))): 0,
        ("shoal_mount_served_bytes_total", (("mount", "/b"), ("path", "socket"))): 4096,
    }
    read = samples(got["shoal_mount_ufs_read_bytes"])
    assert read[("shoal_mount_ufs_read_bytes_total", (("mount", "/a"),))] == 196608


def test_eviction_and_tier_move_families():
    got = exposition({**BASE, **NEW})
    evicted = samples(got["shoal_evicted_pages"])
    assert evicted == {
        ("shoal_evicted_pages_total", (("reason", "capacity"),)): 12,
        ("shoal_evicted_pages_total", (("reason", "quota"),)): 0,
        ("shoal_evicted_pages_total", (("reason", "ttl"),)): 1,
    }
    evicted_bytes = samples(got["shoal_evicted_bytes"])
    assert evicted_bytes[("shoal_evicted_bytes_total", (("reason", "capacity"),))] == 786432
    moved = samples(got["shoal_tier_moved_pages"]) | samples(got["shoal_tier_moved_bytes"])
    assert moved == {
        ("shoal_tier_moved_pages_total", (("direction", "demoted"),)): 4,
        ("shoal_tier_moved_pages_total", (("direction", "promoted"),)): 1,
        ("shoal_tier_moved_bytes_total", (("direction", "demoted"),)): 262144,
        ("shoal_tier_moved_bytes_total", (("direction", "promoted"),)): 9,
    }


def test_quota_families_and_lines():
    quotas = {"quotas": {"/d/q": {"quota": 8 << 20, "bytes": 3 << 20}}, "quota_refused": 2}
    got = exposition({**BASE, **NEW, **quotas})
    assert samples(got["shoal_quota_bytes"]) == {
        ("shoal_quota_bytes", (("prefix", "/d/q"),)): 8 << 20
    }
    assert samples(got["shoal_quota_used_bytes"]) == {
        ("shoal_quota_used_bytes", (("prefix", "/d/q"),)): 3 << 20
    }
    assert samples(got["shoal_quota_refused"]) == {("shoal_quota_refused_total", ()): 2}
    lines = render_report({**BASE, **NEW, **quotas}).splitlines()
    assert "quota       /d/q: 3.0 MiB of 8.0 MiB cached here" in lines
    assert "quota       2 puts not cached (no room under a quota)" in lines
    assert "shoal_quota_bytes" not in exposition({**BASE, **NEW})


def test_latency_histogram_and_error_families():
    got = exposition({**BASE, **NEW})
    family = got["shoal_ufs_request_seconds"]
    assert family.type == "histogram"
    values = samples(family)
    a_get = (("kind", "GET"), ("mount", "/a"))
    assert values[("shoal_ufs_request_seconds_count", a_get)] == 5
    assert values[("shoal_ufs_request_seconds_sum", a_get)] == pytest.approx(20.2036)
    buckets = {
        dict(labels)["le"]: v
        for (name, labels), v in values.items()
        if name == "shoal_ufs_request_seconds_bucket" and ("mount", "/a") in labels
        and ("kind", "GET") in labels
    }  # fmt: skip
    assert buckets["0.0001"] == 0 and buckets["0.00025"] == 1 and buckets["0.0005"] == 2
    assert buckets["0.0025"] == 2 and buckets["0.005"] == 3 and buckets["0.25"] == 4
    assert buckets["10.0"] == 4 and buckets["+Inf"] == 5
    assert len(buckets) == len(LATENCY_BUCKETS) + 1
    head = (("kind", "HEAD"), ("mount", "/a"))
    assert values[("shoal_ufs_request_seconds_bucket", (*head[:1], ("le", "0.0001"), head[1]))]
    assert not any(("mount", "/b") in labels for _, labels in values)  # nothing sent there
    errors = samples(got["shoal_ufs_request_errors"])
    assert errors[("shoal_ufs_request_errors_total", a_get)] == 2
    assert errors[("shoal_ufs_request_errors_total", (("kind", "GET"), ("mount", "/b")))] == 0


def test_an_older_workers_report_has_no_new_families():
    got = exposition(BASE)
    assert "shoal_page_hits" in got and "shoal_ufs_requests" in got
    for name in ("shoal_mount_page_hits", "shoal_evicted_pages", "shoal_tier_moved_pages",
                 "shoal_ufs_request_seconds", "shoal_ufs_request_errors"):  # fmt: skip
        assert name not in got


# ------------------------------------------------------------------- counters


def test_counters_per_mount():
    c = Counters()
    c.add_mount("/a", page_hits=2, bytes_socket=100)
    c.add_mount("/a", page_hits=1, page_misses=4)
    c.add_mount("/b", bytes_ufs=7)
    assert c.by_mount() == {
        "/a": {"page_hits": 3, "page_misses": 4, "bytes_short_circuit": 0, "bytes_socket": 100,
               "bytes_ufs": 0},
        "/b": {"page_hits": 0, "page_misses": 0, "bytes_short_circuit": 0, "bytes_socket": 0,
               "bytes_ufs": 7},
    }  # fmt: skip
    assert c.snapshot()["page_hits"] == 0  # the worker's counters are apart
    snapshot = c.by_mount()
    snapshot["/a"]["page_hits"] = 99
    assert c.by_mount()["/a"]["page_hits"] == 3


def test_an_unknown_mount_counter_is_refused_and_nothing_added():
    c = Counters()
    with pytest.raises(ValueError, match="no counter pages_hit per mount; known: page_hits"):
        c.add_mount("/a", page_hits=1, pages_hit=1)
    with pytest.raises(ValueError, match="no counter bytes per mount"):
        c.add_mounts([("/b", "page_hits", 1), ("/c", "bytes", 2)])
    assert c.by_mount() == {}


def test_mount_counters_of_one_read_are_summed():
    c = Counters()
    c.add_mounts(
        (mount, "page_hits" if hit else "page_misses", 1)
        for mount, hit in [("/a", True), ("/a", False), ("/b", True), ("/a", True)]
    )
    assert {m: (v["page_hits"], v["page_misses"]) for m, v in c.by_mount().items()} == {
        "/a": (2, 1),
        "/b": (1, 0),
    }


def test_mount_counters_are_exact_under_threads():
    c = Counters()

    def hammer(mount: str) -> None:
        for _ in range(5000):
            c.add_mount(mount, page_hits=1, bytes_socket=3)

    threads = [threading.Thread(target=hammer, args=(f"/m{i % 2}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    by_mount = c.by_mount()
    assert by_mount["/m0"]["page_hits"] == by_mount["/m1"]["page_hits"] == 15000
    assert by_mount["/m0"]["bytes_socket"] == 45000


# ------------------------------------------------------------------- histogram math

durations = st.lists(st.integers(0, 30_000_000_000), max_size=60)  # ns, up to 30 s


@given(durations)
def test_histogram_counts_are_cumulative_and_the_sum_matches(ns):
    h = Histogram()
    for d in ns:
        h.observe_ns(d)
    snap = h.snapshot()
    assert snap["buckets"] == list(LATENCY_BUCKETS)
    assert snap["count"] == len(ns)
    assert snap["counts"] == [
        sum(d <= round(b * 1e9) for d in ns) for b in LATENCY_BUCKETS
    ]  # a duration on a bound falls in that bound's bucket
    assert all(x <= y for x, y in zip(snap["counts"], snap["counts"][1:], strict=False))
    assert not snap["counts"] or snap["counts"][-1] <= snap["count"]
    assert snap["sum"] == pytest.approx(sum(ns) / 1e9)


def ns_histogram(ns: list[int], bounds=LATENCY_BUCKETS) -> dict:
    h = Histogram(bounds)
    for d in ns:
        h.observe_ns(d)
    return h.snapshot()


def same(a: dict, b: dict) -> bool:
    return (
        a["buckets"] == b["buckets"]
        and a["counts"] == b["counts"]
        and a["count"] == b["count"]
        and math.isclose(a["sum"], b["sum"], rel_tol=1e-12, abs_tol=1e-12)
    )


@given(durations, durations, durations)
def test_merge_is_the_histogram_of_both_and_associative(x, y, z):
    a, b, c = ns_histogram(x), ns_histogram(y), ns_histogram(z)
    assert same(merge_histograms(a, b), ns_histogram(x + y))
    assert same(merge_histograms(merge_histograms(a, b), c),
                merge_histograms(a, merge_histograms(b, c)))  # fmt: skip
    assert same(merge_histograms(a, b), merge_histograms(b, a))


bounds = st.lists(st.sampled_from(LATENCY_BUCKETS), min_size=1, unique=True).map(sorted)


@given(durations, durations, bounds, bounds)
def test_merge_of_other_bounds_keeps_the_bounds_both_have(x, y, bx, by):
    merged = merge_histograms(ns_histogram(x, bx), ns_histogram(y, by))
    common = sorted(set(bx) & set(by))
    whole = ns_histogram(x + y)
    assert merged["buckets"] == common
    assert merged["counts"] == [whole["counts"][LATENCY_BUCKETS.index(b)] for b in common]
    assert merged["count"] == len(x) + len(y)


@given(durations.filter(bool), st.floats(0, 1))
def test_quantile_lies_in_the_bucket_of_the_true_one(ns, q):
    h = ns_histogram(ns)
    estimate = histogram_quantile(q, h)
    true = sorted(ns)[max(math.ceil(q * len(ns)), 1) - 1] / 1e9
    edges = (0.0, *LATENCY_BUCKETS)
    if true > LATENCY_BUCKETS[-1]:
        assert estimate == LATENCY_BUCKETS[-1]
        return
    upper = next(i for i, b in enumerate(LATENCY_BUCKETS) if true <= b + 1e-12)
    assert edges[upper] - 1e-12 <= estimate <= LATENCY_BUCKETS[upper] + 1e-12
    assert histogram_quantile(min(1.0, q + 0.1), h) >= estimate - 1e-12  # monotone


def test_quantile_interpolates_within_a_bucket():
    h = histogram_of([0.002] * 100)  # all in (0.001, 0.0025]
    assert histogram_quantile(0.5, h) == pytest.approx(0.00175)
    assert histogram_quantile(1.0, h) == pytest.approx(0.0025)
    assert histogram_quantile(0.5, histogram_of([])) is None
    with pytest.raises(ValueError, match="between 0 and 1"):
        histogram_quantile(1.5, h)


def test_bad_histograms_are_refused():
    with pytest.raises(ValueError, match="increase"):
        Histogram([0.1, 0.01])
    with pytest.raises(ValueError, match="finite numbers > 0"):
        Histogram([0.0, 1.0])
    with pytest.raises(ValueError, match="2 bucket bounds but 1 counts"):
        merge_histograms({"buckets": [1.0, 2.0], "counts": [1], "sum": 1.0, "count": 1},
                         histogram_of([1.0]))  # fmt: skip


def test_merged_by_kind_keeps_kinds_of_either():
    a = {"GET": histogram_of([0.001]), "HEAD": histogram_of([0.002])}
    b = {"GET": histogram_of([0.003]), "LIST": histogram_of([0.5])}
    merged = merged_by_kind(a, b)
    assert sorted(merged) == ["GET", "HEAD", "LIST"]
    assert merged["GET"]["count"] == 2 and merged["LIST"] == b["LIST"]
    merged["LIST"]["counts"][0] = 99
    assert b["LIST"]["counts"][0] == 0  # a copy, not the caller's


# ------------------------------------------------------------------- a real store


@pytest.fixture
def store(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"x" * 10_000)
    (tmp_path / "d" / "g").write_bytes(b"y" * 300)
    with LocalStore(tmp_path) as s:
        yield s


def timed(store) -> dict[str, int]:
    return {kind: h["count"] for kind, h in store.latencies().items()}


def test_every_request_of_a_local_store_is_timed(store):
    assert store.latencies() == {}
    buf = bytearray(10_000)
    assert store.read_into("d/f", 0, buf) == 10_000
    assert store.read_into("d/f", 0, buf, size=10_000) == 10_000
    store.fetch_into("d/f", 100, bytearray(50))
    store.stat("d/g")
    assert [i.path for i in store.list("d/")] == ["d/f", "d/g"]
    store.list_dir("d")
    got = store.read_many_into([("d/f", bytearray(10_000), None), ("d/g", bytearray(300), None)])
    assert got == [10_000, 300]
    store.write("d/h", b"new")
    store.delete("d/h")
    sent = {k: n for k, n in store.requests().items() if n}
    assert sent == {"GET": 5, "HEAD": 1, "LIST": 2, "PUT": 1, "DELETE": 1}
    assert timed(store) == sent  # each request counted is timed, once
    for kind, h in store.latencies().items():
        assert h["buckets"] == list(LATENCY_BUCKETS)
        assert 0 < h["sum"] < 60, kind
        assert h["counts"][-1] <= h["count"]
    assert store.errors() == dict.fromkeys(REQUEST_KINDS, 0)


def test_a_listing_is_timed_while_the_store_works_only(store, tmp_path):
    for i in range(50):
        (tmp_path / "d" / f"n{i:02d}").write_bytes(b"")
    listing = store.list()
    next(listing)
    assert "LIST" not in timed(store)  # still listing
    time.sleep(0.3)  # the caller's time between two objects is not the store's
    for _ in listing:
        pass
    h = store.latencies()["LIST"]
    assert h["count"] == 1 and h["sum"] < 0.3
    abandoned = store.list()
    next(abandoned)
    del abandoned  # a listing given up is timed too
    assert timed(store)["LIST"] == store.requests()["LIST"] == 2


def test_failures_are_errors_and_answers_are_not(store, tmp_path):
    os.symlink(tmp_path / "d" / "f", tmp_path / "d" / "link")
    with pytest.raises(FileNotFoundError):
        store.stat("d/missing")
    with pytest.raises(IsADirectoryError):
        store.read_into("d", 0, bytearray(1))
    with pytest.raises(PermissionError):
        store.stat("d/link")  # a refused link: the store failed the request
    with pytest.raises(PermissionError):
        store.read_into("d/link", 0, bytearray(1))
    bad = store.read_many_into([("d/link", bytearray(1), None), ("d/g", bytearray(300), None)])
    assert isinstance(bad[0], PermissionError) and bad[1] == 300
    assert store.errors() == {**dict.fromkeys(REQUEST_KINDS, 0), "HEAD": 1, "GET": 2}
    assert timed(store) == {"HEAD": 2, "GET": 4}  # failed requests are timed too
    assert {k: n for k, n in store.requests().items() if n} == {"HEAD": 2, "GET": 4}


def test_latencies_survive_close_and_a_retired_store_is_kept(store, tmp_path):
    store.stat("d/f")
    traffic = UnderStoreTraffic()
    traffic.retire("/m", store)
    store.close()
    assert timed(store) == {"HEAD": 1}  # still readable once closed
    with LocalStore(tmp_path) as second:
        second.stat("d/f")
        second.read_into("d/g", 0, bytearray(300))
        open_now = {"/m": second}
        assert traffic.requests(open_now)["/m"]["HEAD"] == 2
        latency = traffic.latencies(open_now)["/m"]
        assert (latency["HEAD"]["count"], latency["GET"]["count"]) == (2, 1)
        assert traffic.errors(open_now)["/m"] == dict.fromkeys(REQUEST_KINDS, 0)
        assert traffic.latencies({})["/m"] == {"HEAD": store.latencies()["HEAD"]}


# ------------------------------------------------------------------- shoal report


def test_report_text_shows_the_new_sections():
    text = render_report({**BASE, **NEW})
    lines = text.splitlines()
    assert "evicted     capacity 12 pages (768.0 KiB), ttl 1 pages (10 B)" in lines
    assert "tier moves  demoted 4 pages (256.0 KiB), promoted 1 pages (9 B)" in lines
    rows = {line.split()[0]: line.split() for line in lines if line.startswith(("/a", "/b"))}
    start = next(i for i, line in enumerate(lines) if line.startswith("MOUNT  "))
    assert lines[start].split() == ["MOUNT", "HITS", "MISSES", "HIT", "RATIO", "SHORT-CIRCUIT",
                                    "SOCKET", "UNDER-STORE"]  # fmt: skip
    assert lines[start + 1].split() == ["/a", "4", "3", "57.1%", "64.0", "KiB", "1000", "B",
                                        "192.0", "KiB"]  # fmt: skip
    latency = [line.split() for line in lines if line.split()[:1] == ["/a"]][1:]
    # median: the 2.5th of 5, half-way into the bucket (2.5 ms, 5 ms] that holds the 3rd
    assert latency[0] == ["/a", "GET", "5", "2", "4.04s", "3.8ms", ">10.00s"]
    assert latency[1][:4] == ["/a", "HEAD", "1", "0"]
    assert "/b" in rows  # in the mount table, not in the latency one (nothing sent)
    assert render_report(BASE).count("MOUNT") == 0  # an older worker's report


def test_cluster_sum_merges_histograms_and_per_mount_counts():
    other = {**BASE, **NEW, "ufs_latency": {"/a": {"GET": histogram_of([0.0002])},
                                            "/c": {"PUT": histogram_of([1.0])}},
             "evictions": {"capacity": {"pages": 1, "bytes": 2}}}  # fmt: skip
    total = summed_reports([{**BASE, **NEW}, other])
    get = total["ufs_latency"]["/a"]["GET"]
    assert get == merge_histograms(GET_A, histogram_of([0.0002]))
    assert get["count"] == 6 and get["counts"][1] == 2
    assert total["ufs_latency"]["/a"]["HEAD"] == NEW["ufs_latency"]["/a"]["HEAD"]
    assert total["ufs_latency"]["/c"]["PUT"]["count"] == 1
    assert total["by_mount"]["/a"]["page_hits"] == 8
    assert total["by_mount"]["/b"]["bytes_socket"] == 8192
    assert total["evictions"]["capacity"] == {"pages": 13, "bytes": 786434}
    assert total["evictions"]["ttl"] == {"pages": 1, "bytes": 10}
    assert total["ufs_errors"]["/a"]["GET"] == 4
    assert "MOUNT" in render_report(total)
