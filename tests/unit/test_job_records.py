"""Load job records: ids that sort by start time, record fields, newest-first listing, the
``shoal load --history`` table and its arguments."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.cli import main
from shoal.cli._load import format_history
from shoal.control import _jobs
from shoal.control._metastore import LocalMetaStore


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 4 * 10**15), min_size=2, max_size=20, unique=True))
def test_job_ids_sort_as_their_start_times(micros):
    """Distinct start times (to the microsecond, up to year 2096) sort as their ids."""
    ids = [_jobs.new_job_id(m / 1e6) for m in micros]
    assert [m for _, m in sorted(zip(ids, micros, strict=True))] == sorted(micros)


def test_new_job_id_form():
    job = _jobs.new_job_id(0.25)
    assert (
        job.startswith("19700101T000000.250000Z-")
        and len(job) == len("19700101T000000.250000Z-") + 4
    )


def test_load_record_and_finish():
    paths = [f"/m/{i}" for i in range(8)]
    r = _jobs.load_record("id1", paths, False, "all", 100.0)
    assert r["state"] == "RUNNING" and r["finished"] is None and r["error"] is None
    assert r["paths"] == {"count": 8, "first": paths[:5]}
    assert r["replicas"] == "all" and r["metadata_only"] is False and r["started"] == 100.0
    assert all(r[k] == 0 for k in _jobs.COUNTS)
    done = _jobs.finish_record(
        r, "DONE", {"files_done": 3, "bytes_skipped": 7, "other": 1}, None, 105.0
    )
    assert done["state"] == "DONE" and done["finished"] == 105.0
    assert done["files_done"] == 3 and done["bytes_skipped"] == 7 and "other" not in done
    assert r["state"] == "RUNNING"  # the original is untouched
    failed = _jobs.finish_record(r, "FAILED", {}, "OSError: boom")
    assert failed["error"] == "OSError: boom" and failed["finished"] >= 105.0
    for bad in ("RUNNING", "done", ""):
        with pytest.raises(ValueError, match="DONE, FAILED or STOPPED"):
            _jobs.finish_record(r, bad, {})


def test_job_keys_checked():
    assert _jobs.check_job_key("jobs/load/x") == "jobs/load/x"
    for bad in ("mounts/x", "jobs/load", "jobs//x", "jobs/load/x/y", 3, "jobs/load/"):
        with pytest.raises(ValueError, match="jobs/<kind>/<id>"):
            _jobs.check_job_key(bad)


def test_newest_first_and_limit():
    pairs = [(f"jobs/load/{k}", {"id": k}) for k in ("b", "a", "d", "c")]
    assert [d["id"] for d in _jobs.newest_first(pairs)] == ["d", "c", "b", "a"]
    assert [d["id"] for d in _jobs.newest_first(pairs, 2)] == ["d", "c"]
    assert _jobs.newest_first(pairs, 0) == []
    for bad in (-1, True, 1.5, "2"):
        with pytest.raises(ValueError, match="limit"):
            _jobs.newest_first(pairs, bad)


def test_mark_abandoned_fails_only_running_loads(tmp_path):
    with LocalMetaStore(tmp_path / "meta") as store:
        store.put("jobs/load/1", {"id": "1", "state": "RUNNING"})
        store.put("jobs/load/2", {"id": "2", "state": "DONE"})
        store.put("mounts/x", {"state": "RUNNING"})
        assert _jobs.mark_abandoned(store, "gone") == 1
        assert store.get("jobs/load/1") == {"id": "1", "state": "FAILED", "error": "gone"}
        assert store.get("jobs/load/2")["state"] == "DONE"
        assert store.get("mounts/x") == {"state": "RUNNING"}


def record(job, state, started, finished, **counts):
    r = _jobs.load_record(job, ["/m/a"], False, None, started)
    if state == "RUNNING":
        return {**r, **counts}
    return _jobs.finish_record(
        r, state, counts, "KeyboardInterrupt" if state == "STOPPED" else None, finished
    )


def test_history_table():
    now = 1_000_000.0
    records = [
        record("j3", "RUNNING", now - 5, None, files_done=1, files_total=4, bytes_done=1024,
               bytes_total=4096),
        record("j2", "STOPPED", now - 100, now - 90, files_done=2, files_total=3,
               bytes_done=3 << 20, bytes_total=3 << 20, bytes_skipped=1 << 20),
        record("j1", "DONE", now - 4000, now - 3999.5, files_done=3, files_total=3,
               bytes_done=10, bytes_total=10),
    ]  # fmt: skip
    lines = format_history(records, now=now).splitlines()
    assert lines[0].split() == ["ID", "STATE", "STARTED", "DURATION", "FILES", "BYTES", "SKIPPED"]
    assert lines[1].split()[:2] == ["j3", "RUNNING"] and "5.0s" in lines[1]
    assert "1/4" in lines[1] and "1.0 KiB/4.0 KiB" in lines[1]
    assert lines[2].split()[:2] == ["j2", "STOPPED"] and "10.0s" in lines[2]
    assert lines[2].rstrip().endswith("1.0 MiB")
    assert lines[3].strip() == "KeyboardInterrupt"  # the reason, under its row
    assert lines[4].split()[:2] == ["j1", "DONE"] and "500ms" in lines[4]
    assert len(lines) == 5
    assert all(line == line.rstrip() for line in lines)


def test_history_arguments(capsys):
    for argv, message in (
        (["load", "--history", "/m"], "--history lists past loads"),
        (["load", "--history", "--metadata-only"], "--history lists past loads"),
        (["load", "--history", "--limit", "-1"], "expected a count >= 0"),
        (["load", "--history", "--limit", "x"], "expected a count >= 0"),
        (["load", "/m", "--json"], "--json goes with --history"),
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        assert message in capsys.readouterr().err
