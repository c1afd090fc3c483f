"""The worker's table of files written and not in their store yet: the directories above
them, kept right as the table changes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shoal.control._files import PendingFiles

_names = st.sampled_from(["a", "b", "c"])
_paths = st.lists(_names, min_size=1, max_size=4).map(lambda parts: "/m/" + "/".join(parts))


def _expected(table: dict) -> set[str]:
    out = set()
    for path, f in table.items():
        if f is None:
            continue
        while path != "/":
            path = path.rsplit("/", 1)[0] or "/"
            out.add(path)
    return out


@given(st.lists(st.tuples(st.sampled_from(["set", "delete", "pop", "gone"]), _paths)))
def test_the_directories_follow_every_change(changes):
    table, model = PendingFiles(), {}
    for op, path in changes:
        if op == "set":
            table[path] = model[path] = object()
        elif op == "gone":  # deleted here, the store not told yet: no directory of its own
            table[path] = model[path] = None
        elif op == "delete" and path in model:
            del table[path]
            del model[path]
        elif op == "pop":
            assert table.pop(path, "none") == model.pop(path, "none")
        assert table.dirs() == _expected(model)
        assert dict(table) == model


def test_a_directory_of_a_deleted_file_only_is_none():
    table = PendingFiles()
    table["/m/x/f"] = None
    assert table.dirs() == frozenset()
    table["/m/x/g"] = object()
    assert table.dirs() == {"/", "/m", "/m/x"}
