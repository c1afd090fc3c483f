"""Output of the ``shoal`` command: tables, listings, reports and the progress display."""

from __future__ import annotations

import io
from typing import NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.cli._common import format_duration, format_table
from shoal.cli._du import render_du
from shoal.cli._fs import render_listing, render_stat
from shoal.cli._mount import render_mounts, shown_options
from shoal.cli._progress import ProgressBar
from shoal.cli._report import render_cluster_report, render_report
from shoal.client._usage import summed_reports
from shoal.control._namespace import Mount


class FileInfo(NamedTuple):
    """What ``Client.stat`` and ``Client.ls`` describe a file with."""

    path: str
    size: int
    mtime: float
    version: str
    is_dir: bool


class Clock:
    """A settable time source for the progress display."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_format_table_aligns_columns():
    text = format_table([("a", 1, "x"), ("long-name", 12345, "y")], ("N", "SIZE", "Z"), right=(1,))
    assert text.splitlines() == [
        "N           SIZE  Z",
        "a              1  x",
        "long-name  12345  y",
    ]


@given(
    st.lists(
        st.tuples(st.text("abc xyz", max_size=8), st.integers(0, 10**12)), min_size=1, max_size=8
    )
)
@settings(max_examples=50, deadline=None)
def test_format_table_has_no_trailing_blanks_and_aligned_columns(rows):
    lines = format_table(rows, ("NAME", "SIZE"), right=(1,)).splitlines()
    assert len(lines) == len(rows) + 1
    assert all(line == line.rstrip() for line in lines)
    ends = {len(line) for line in lines}
    assert len(ends) == 1  # the right-aligned last column ends every line at one place


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0123, "12ms"),
        (-1, "0ms"),
        (12.34, "12.3s"),
        (245, "4m05s"),
        (3 * 3600 + 120, "3h02m"),
        (2 * 86400 + 4 * 3600, "2d04h"),
    ],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_listing_short_and_long():
    entries = [
        FileInfo("/m/dir", 0, 0.0, "", True),
        FileInfo("/m/file.bin", 123456, 1_700_000_000.0, "abc", False),
    ]
    assert render_listing(entries) == "dir/\nfile.bin"
    lines = render_listing(entries, long=True).splitlines()
    assert lines[0].split() == ["TYPE", "SIZE", "MODIFIED", "NAME"]
    assert lines[1].split() == ["d", "0", "-", "dir/"]
    assert lines[2].split()[0:2] == ["-", "123456"]
    assert lines[2].endswith("file.bin")


def test_stat_text():
    text = render_stat(FileInfo("/m/f", 5 << 20, 0.0, '"etag-1"', False))
    assert text.splitlines() == [
        "path     /m/f",
        "type     file",
        "size     5.0 MiB (5242880 B)",
        "modified -",
        'version  "etag-1"',
    ]
    assert "size     0 B" in render_stat(FileInfo("/m", 0, 0.0, "", True))


def test_mount_table_shows_env_names_and_masks_secrets():
    mounts = [
        Mount(
            "/data",
            "s3://bucket/p",
            {
                "endpoint_url": "http://127.0.0.1:9000",
                "access_key_env": "MY_AK",
                "secret_key_env": "MY_SK",
                "anonymous": False,
            },
        ),
        Mount("/odd", "memory://x", {"secret_key": "hunter2", "client_kwargs": {"token": "t0k"}}),
        Mount("/plain", "file:///srv", {}),
    ]
    text = render_mounts(mounts)
    assert "access_key_env=MY_AK" in text and "secret_key_env=MY_SK" in text
    assert "anonymous=false" in text
    assert "hunter2" not in text and "t0k" not in text
    assert "secret_key=<hidden>" in text
    assert "client_kwargs={token=<hidden>}" in text
    assert text.splitlines()[0].split() == ["PATH", "URI", "OPTIONS"]
    assert text.splitlines()[3].split() == ["/plain", "file:///srv", "-"]
    shown = shown_options(mounts[1].options)
    assert shown == {"secret_key": "<hidden>", "client_kwargs": {"token": "<hidden>"}}
    assert render_mounts([]).startswith("no mounts")


REPORT = {
    "worker": {
        "pid": 4242,
        "host_id": "node-a",
        "home": "/tmp/h",
        "uptime": 75.0,
        "engine": "io_uring",
        "page_size": 4 << 20,
    },
    "tiers": {
        "MEM": {
            "capacity": 1 << 30,
            "region_size": 64 << 20,
            "regions_total": 16,
            "regions_used": 4,
            "allocated_bytes": 256 << 20,
            "live_bytes": 200 << 20,
            "pages": 50,
            "state": "unstable",
            "io_errors": 2,
            "last_error": "OSError: [Errno 5] region file cut short under its pages",
        },
        "SSD": {
            "capacity": 4 << 30,
            "region_size": 64 << 20,
            "regions_total": 64,
            "regions_used": 0,
            "allocated_bytes": 0,
            "live_bytes": 0,
            "pages": 0,
            "state": "normal",
            "io_errors": 0,
            "last_error": None,
        },
    },
    "pages": 50,
    "page_hits": 150,
    "page_misses": 50,
    "hit_ratio": 0.75,
    "ufs_reads": 50,
    "ufs_pages": 50,
    "ufs_bytes": 200 << 20,
    "ufs_requests": {"GET": 50, "HEAD": 0, "LIST": 1, "PUT": 0},
    "ufs_requests_by_mount": {"/a": {"GET": 30, "LIST": 1}, "/b": {"GET": 20}},
    "pages_located": 140,
    "pages_sent": 60,
    "bytes_sent": 10 << 20,
    "pages_prefetched": 3,
    "requests": 99,
    "mounts": 2,
    "store_full": 0,
}


def test_report_text():
    text = render_report(REPORT)
    lines = text.splitlines()
    assert lines[0] == (
        "worker      pid 4242 on node-a, up 1m15s, engine io_uring, page size 4.0 MiB"
    )
    table = [line.split() for line in lines if line.startswith(("TIER", "MEM", "SSD", "total"))]
    assert table[0] == [
        "TIER", "CAPACITY", "ALLOCATED", "LIVE", "USE", "PAGES", "REGIONS", "STATE", "IO",
        "ERRORS",
    ]  # fmt: skip
    assert table[1] == [
        "MEM", "1.0", "GiB", "256.0", "MiB", "200.0", "MiB", "25.0%", "50", "4/16", "unstable",
        "2",
    ]  # fmt: skip
    assert table[2][-2:] == ["normal", "0"]
    assert table[3][0] == "total" and "5.0" in table[3]
    assert "tier MEM unstable: OSError: [Errno 5] region file cut short under its pages" in lines
    assert "hit ratio   75.0% (150 hits, 50 misses)" in lines
    assert (
        "under-store 200.0 MiB read in 50 reads (50 pages); requests sent GET 50, LIST 1" in lines
    )
    assert "  /a: GET 30, LIST 1" in lines and "  /b: GET 20" in lines
    assert "not cached" not in text


def test_report_of_a_fresh_worker():
    fresh = {**REPORT, "page_hits": 0, "page_misses": 0, "hit_ratio": 0.0, "store_full": 7}
    text = render_report(fresh)
    assert "hit ratio   - (0 hits, 0 misses)" in text
    assert "not cached  7 pages (no tier took them)" in text


def other_worker() -> dict:
    """A second worker's report: its MEM tier down, SSD in use, other traffic."""
    tiers = {name: dict(t) for name, t in REPORT["tiers"].items()}
    tiers["MEM"].update(state="down", io_errors=5, live_bytes=0, pages=0)
    tiers["SSD"].update(regions_used=2, allocated_bytes=128 << 20, live_bytes=100 << 20, pages=25)
    return {
        **REPORT,
        "worker": {**REPORT["worker"], "pid": 7, "host_id": "node-b"},
        "tiers": tiers,
        "pages": 25,
        "page_hits": 0,
        "page_misses": 100,
        "hit_ratio": 0.0,
        "ufs_requests": {"GET": 5, "HEAD": 2, "LIST": 0, "PUT": 0},
        "ufs_requests_by_mount": {"/a": {"GET": 5, "HEAD": 2}},
        "requests": 1,
    }


def test_reports_summed_over_workers():
    total = summed_reports([REPORT, other_worker()])
    assert total["workers"] == 2 and "worker" not in total
    assert total["pages"] == 75 and total["requests"] == 100
    assert (total["page_hits"], total["page_misses"]) == (150, 150)
    assert total["hit_ratio"] == 0.5  # from the sums, not the mean of the ratios
    assert total["ufs_requests"] == {"GET": 55, "HEAD": 2, "LIST": 1, "PUT": 0}
    assert total["ufs_requests_by_mount"] == {"/a": {"GET": 35, "LIST": 1, "HEAD": 2},
                                              "/b": {"GET": 20}}  # fmt: skip
    mem, ssd = total["tiers"]["MEM"], total["tiers"]["SSD"]
    assert (mem["capacity"], mem["live_bytes"], mem["io_errors"]) == (2 << 30, 200 << 20, 7)
    assert mem["state"] == "down" and ssd["state"] == "normal"  # the worst of its parts
    assert mem["region_size"] == 64 << 20  # a setting, not summed
    assert "last_error" not in mem
    assert (ssd["pages"], ssd["regions_used"], ssd["regions_total"]) == (25, 2, 128)
    assert total["mounts"] == 2  # the cluster's mount table, not summed
    one = summed_reports([REPORT])
    assert {k: one[k] for k in ("pages", "hit_ratio", "ufs_requests")} == {
        k: REPORT[k] for k in ("pages", "hit_ratio", "ufs_requests")
    }
    assert summed_reports([]) == {"hit_ratio": 0.0, "workers": 0}


def test_cluster_report_text():
    workers = {"w-b": other_worker(), "w-a": REPORT}
    doc = {"workers": workers, "total": summed_reports(workers.values()), "unreachable": ["w-c"]}
    lines = render_cluster_report(doc, cluster=True).splitlines()
    assert lines[:2] == [
        "cluster     2 worker(s) answered, summed below",
        "not summed  w-c (did not answer)",
    ]
    assert not any(line.startswith(("worker ", "home ")) for line in lines)
    assert "hit ratio   50.0% (150 hits, 150 misses)" in lines
    start = next(i for i, line in enumerate(lines) if line.startswith("WORKER"))
    rows = [line.split() for line in lines[start:]]
    assert rows == [
        ["WORKER", "HOST", "PAGES", "LIVE", "HIT", "RATIO"],
        ["w-a", "node-a", "50", "200.0", "MiB", "75.0%"],
        ["w-b", "node-b", "25", "100.0", "MiB", "0.0%"],
    ]
    one = render_cluster_report({"workers": {"n": REPORT}, "total": summed_reports([REPORT])},
                                cluster=False)  # fmt: skip
    assert one.startswith("cluster     none: a single node, its one worker shown\n")


def test_du_text():
    doc = {
        "path": "/d", "bytes": 3 << 20, "pages": 3, "files": 2,
        "tiers": {"MEM": 1 << 20, "SSD": 2 << 20}, "unreachable": [],
        "workers": {
            "w1": {"bytes": 2 << 20, "pages": 2, "files": 1, "tiers": {"SSD": 2 << 20}},
            "w0": {"bytes": 1 << 20, "pages": 1, "files": 1, "tiers": {"MEM": 1 << 20, "SSD": 0}},
        },
    }  # fmt: skip
    assert render_du(doc, cluster=False).splitlines() == [
        "path    /d",
        "cached  3.0 MiB (3145728 B) in 3 pages of 2 files",
        "tiers   MEM 1.0 MiB, SSD 2.0 MiB",
    ]
    lines = render_du({**doc, "unreachable": ["w2"]}, cluster=True).splitlines()
    assert [line.split() for line in lines[4:7]] == [
        ["WORKER", "CACHED", "PAGES", "FILES", "MEM", "SSD"],
        ["w0", "1.0", "MiB", "1", "1", "1.0", "MiB", "0", "B"],
        ["w1", "2.0", "MiB", "2", "1", "0", "B", "2.0", "MiB"],
    ]
    assert lines[-1] == "not counted: worker(s) w2 did not answer"


# --------------------------------------------------------------------- progress


def test_progress_plain_lines_are_periodic():
    out, clock = io.StringIO(), Clock()
    bar = ProgressBar(out, "load", tty=False, interval=5.0, clock=clock)
    bar.update(1, 10, 1 << 20, 10 << 20)
    assert out.getvalue() == ""  # not due yet
    clock.now += 5
    bar.update(5, 10, 5 << 20, 10 << 20)
    assert out.getvalue() == (
        "load:  50%, 5/10 files, 5.0 MiB of 10.0 MiB, 1.0 MiB/s, 5.0s elapsed, ETA 5.0s\n"
    )
    clock.now += 1
    bar.update(6, 10, 6 << 20, 10 << 20)
    assert out.getvalue().count("\n") == 1
    clock.now += 4
    bar.update(10, 10, 10 << 20, 10 << 20)
    bar.finish()
    bar.finish()
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[-1] == "load: 100%, 10/10 files, 10.0 MiB of 10.0 MiB, 1.0 MiB/s, 10.0s elapsed"


def test_progress_counts_files_when_there_are_no_bytes():
    out, clock = io.StringIO(), Clock()
    bar = ProgressBar(out, "metadata", tty=False, clock=clock)
    bar.update(3, 4, 0, 0)
    bar.finish()
    assert out.getvalue().startswith("metadata:  75%, 3/4 files, 0 B of 0 B")


def test_progress_on_a_terminal_redraws_one_line():
    out, clock = io.StringIO(), Clock()
    bar = ProgressBar(out, "load", tty=True, width=100, tty_interval=0.5, clock=clock)
    bar.update(0, 4, 0, 4 << 20)
    clock.now += 0.25
    bar.update(1, 4, 1 << 20, 4 << 20)  # within the interval: not drawn
    clock.now += 0.25
    bar.update(2, 4, 2 << 20, 4 << 20)
    clock.now += 0.5
    bar.update(4, 4, 4 << 20, 4 << 20)
    bar.finish()
    text = out.getvalue()
    assert text.endswith("\n") and text.count("\n") == 1
    frames = text.rstrip("\n").split("\r")[1:]
    assert len(frames) == 4  # three updates drawn, then the final state
    assert all(len(f.rstrip()) <= 99 for f in frames)
    half = frames[1].split("[", 1)[1].split("]", 1)[0]
    assert half.count("#") == len(half) // 2
    assert " 50%  2/4 files  2.0/4.0 MiB" in frames[1]
    assert "ETA" in frames[1]
    assert frames[-1].rstrip().endswith("in 1.0s")
    bar_cells = frames[-1].split("[", 1)[1].split("]", 1)[0]
    assert len(bar_cells) >= 10 and set(bar_cells) == {"#"}


def test_progress_bar_keeps_its_width():
    out, clock = io.StringIO(), Clock()
    bar = ProgressBar(out, "load", tty=True, width=80, tty_interval=0, clock=clock)
    for i in range(11):
        clock.now += 0.5
        bar.update(i * 100, 1000, i * (300 << 20), 3000 << 20)
    bar.finish()
    frames = out.getvalue().rstrip("\n").split("\r")[1:]
    assert len({len(f.split("[", 1)[1].split("]", 1)[0]) for f in frames}) == 1
    assert all(len(f.rstrip()) <= 79 for f in frames)
    assert "  40%  400/1000 files  1.2/2.9 GiB  480.0 MiB/s  ETA 3.8s" in frames[4]


def test_progress_fits_a_narrow_terminal():
    out = io.StringIO()
    bar = ProgressBar(out, "load", tty=True, width=30, clock=Clock())
    bar.update(1, 2, 1, 2)
    frame = out.getvalue().lstrip("\r")
    assert len(frame) <= 29
    assert "[" not in frame  # no room for a bar


def test_progress_abort_ends_the_terminal_line():
    out = io.StringIO()
    bar = ProgressBar(out, "load", tty=True, width=80, clock=Clock())
    bar.update(1, 2, 1, 2)
    bar.abort()
    bar.finish()
    assert out.getvalue().endswith("\n") and out.getvalue().count("\n") == 1


def test_progress_detects_a_terminal():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert ProgressBar(Tty()).tty
    assert not ProgressBar(io.StringIO()).tty
