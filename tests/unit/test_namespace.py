import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.control._metastore import LocalMetaStore
from shoal.control._namespace import MountTable, normalize_path

segment = st.text(alphabet="abc.-_", min_size=1, max_size=4).filter(lambda s: s not in (".", ".."))
shoal_path = st.lists(segment, max_size=5).map(lambda parts: "/" + "/".join(parts))


@pytest.fixture
def table(tmp_path):
    store = LocalMetaStore(tmp_path / "meta")
    yield MountTable(store)
    store.close()


@given(st.lists(st.sampled_from(["", ".", "a", "b", "c.d"]), max_size=8))
def test_normalize_is_canonical_and_idempotent(parts):
    raw = "/" + "/".join(parts)
    norm = normalize_path(raw)
    assert normalize_path(norm) == norm
    assert norm == "/" or not norm.endswith("/")
    assert "//" not in norm and "/./" not in norm + "/"
    assert [p for p in norm.split("/") if p] == [p for p in parts if p not in ("", ".")]


@given(st.text(st.sampled_from("/.ab\0é"), max_size=12))
def test_normalize_is_the_same_with_and_without_its_fast_path(raw):
    """The one-pass check for canonical paths agrees with the full normalisation."""

    def reference(path: str) -> str:
        if not path.startswith("/") or "\0" in path:
            raise ValueError(path)
        parts = [p for p in path.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise ValueError(path)
        return "/" + "/".join(parts)

    try:
        want = reference(raw)
    except ValueError:
        with pytest.raises(ValueError):
            normalize_path(raw)
        return
    assert normalize_path(raw) == want


@pytest.mark.parametrize(
    "bad, message",
    [
        ("relative/path", "absolute"),
        ("", "absolute"),
        ("/a/../etc", "'..'"),
        ("/..", "'..'"),
        ("/a\0b", "NUL"),
        ("/caf\udce9", "not UTF-8"),  # a name in bytes that are not UTF-8, as fsdecode gives it
        ("/\ud800x", "not UTF-8"),
        (b"/bytes", "str"),
        (None, "str"),
    ],
)
def test_bad_paths_are_value_errors(table, bad, message):
    with pytest.raises(ValueError, match=message):
        normalize_path(bad)
    with pytest.raises(ValueError, match=message):
        table.resolve(bad)


@given(mounts=st.lists(shoal_path, unique=True, max_size=6), query=shoal_path)
def test_longest_prefix_wins(tmp_path_factory, mounts, query):
    store = LocalMetaStore(tmp_path_factory.mktemp("meta"))
    try:
        table = MountTable(store)
        for i, m in enumerate(mounts):
            table.mount(m, f"file:///under/{i}")
        covering = [m for m in mounts if m == "/" or query == m or query.startswith(m + "/")]
        if not covering:
            with pytest.raises(FileNotFoundError, match="not under any mount"):
                table.resolve(query)
            return
        best = max(covering, key=len)
        mount, rel = table.resolve(query)
        assert mount.path == best
        assert (best.rstrip("/") + "/" + rel).rstrip("/") == query.rstrip("/") or rel == ""
        assert mount.child_uri(rel).startswith(mount.uri)
    finally:
        store.close()


def test_mounts_survive_reopen(tmp_path):
    store = LocalMetaStore(tmp_path / "meta")
    table = MountTable(store)
    table.mount("/datasets/imagenet", "s3://bucket/imagenet/", endpoint_url="http://x:1")
    table.mount("/models", "file:///srv/models")
    table.unmount("/models")
    store.close()

    store = LocalMetaStore(tmp_path / "meta")
    table = MountTable(store)
    assert [(m.path, m.uri, dict(m.options)) for m in table.mounts()] == [
        ("/datasets/imagenet", "s3://bucket/imagenet/", {"endpoint_url": "http://x:1"})
    ]
    mount, rel = table.resolve("/datasets/imagenet/train/0001.jpg")
    assert mount.child_uri(rel) == "s3://bucket/imagenet/train/0001.jpg"
    store.close()


def test_mount_errors(table):
    table.mount("/a", "file:///x")
    with pytest.raises(FileExistsError, match="already a mount point"):
        table.mount("/a/", "file:///y")
    with pytest.raises(FileNotFoundError, match="not a mount point"):
        table.unmount("/b")
    with pytest.raises(ValueError, match="URI"):
        table.mount("/c", "")


def test_validator_rejects_before_storing(table):
    def validate(uri, options):
        if not uri.startswith("file://"):
            raise ValueError(f"unsupported URI {uri}")

    checked = MountTable(table._store, validate)
    with pytest.raises(ValueError, match="unsupported URI"):
        checked.mount("/x", "bogus://y")
    assert checked.mounts() == []


def test_options_are_read_only(table):
    mount = table.mount("/a", "file:///x", read_only=True)
    with pytest.raises(TypeError):
        mount.options["read_only"] = False
