"""The worker's policies: kept in the MetaStore, changed with compare-and-set, followed by
every worker on its own, and handed to the file resolver, which overlays them on the
mounts' options.

Keys: ``policies/rules/<path>`` holds ``{"path": ..., "policy": {...}}`` per prefix, and
``policies/version`` holds ``{"version": n}``, raised by every change in the same
compare-and-set. A worker that shares its MetaStore (etcd) reads that one small key every
second and the rules again when it moved: a change made through any worker holds on every
worker within seconds, with no coordinator that could be down. A worker whose store is its
own (RocksDB) is the only writer and needs no polling.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ._files import FileResolver
from ._metastore import MetaStore
from ._namespace import Mount, normalize_path
from ._policy import MAX_POLICIES, Policy, PolicyTable, check_enforced, effective, field_name
from ._server import Handler, Reply

__all__ = ["WorkerPolicies"]

log = logging.getLogger("shoal.worker")

_RULES = "policies/rules/"
_VERSION = "policies/version"
_POLL_SECONDS = 1.0
_ATTEMPTS = 16  # compare-and-set rounds lost to other writers before giving up


def _version_of(doc: Any) -> int:
    """The number in a version document; 0 for none (or one this worker cannot read)."""
    number = doc.get("version") if isinstance(doc, dict) else None
    return number if type(number) is int else 0


def _rule(path: str, policy: Policy) -> dict | None:
    """The document of a rule; None for a policy that sets nothing (no rule)."""
    fields = policy.to_json()
    return {"path": path, "policy": fields} if fields else None


class WorkerPolicies:
    """The policies a worker serves and enforces.

    Parameters
    ----------
    store
        Where they are kept (the worker's MetaStore).
    files
        The resolver that enforces them; given the table at once and after every change.
    shared
        The store is shared with other workers (etcd): follow their changes.
    interval
        Seconds between two reads of the version key, when ``shared``.

    Notes
    -----
    Thread-safe. Call :meth:`close` once at the end, before the store is closed.
    """

    def __init__(
        self,
        store: MetaStore,
        files: FileResolver,
        *,
        shared: bool,
        interval: float = _POLL_SECONDS,
    ):
        self._store = store
        self._files = files
        self._lock = threading.Lock()
        self._version = -1  # of the table in force; -1 before the first read
        self.table = PolicyTable()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: ``(path) -> bytes`` pinned under a path on this worker: a quota below it is
        #: refused (a quota never evicts pinned pages).
        self.pinned_bytes: Callable[[str], int] | None = None
        self.reload()
        if shared:
            self._thread = threading.Thread(
                target=self._follow, args=(interval,), name="shoal-policies", daemon=True
            )
            self._thread.start()

    def handlers(self) -> dict[str, Handler]:
        """The ops of policies, for the worker's op -> handler table."""
        return {
            "policy_set": lambda _, h: Reply({"policy": self.set(h["path"], h["policy"])}),
            "policy_rm": lambda _, h: Reply({"policy": self.remove(h["path"], h["fields"])}),
            "policies": lambda _, h: Reply({"policies": self.rules()}),
            "policy_show": lambda _, h: Reply({"effective": self.effective(h["path"])}),
        }

    # ----------------------------------------------------------------- reading

    def _read(self) -> tuple[Any, dict[str, Any]]:
        """The version document and every rule document, by path, as stored now."""
        version = self._store.get(_VERSION)
        docs = {key[len(_RULES) :]: doc for key, doc in self._store.scan(_RULES)}
        return version, docs

    @staticmethod
    def _table(docs: Mapping[str, Any]) -> PolicyTable:
        """The table of the rule documents; one this worker cannot read is left out (it
        may come from a newer version of Shoal) and logged."""
        rules = {}
        for path, doc in docs.items():
            try:
                if not isinstance(doc, dict) or not isinstance(doc.get("policy"), dict):
                    raise ValueError("not a policy document")
                rules[normalize_path(path)] = Policy.from_fields(doc["policy"])
            except ValueError as exc:
                log.warning("policy on %s left out: %s", path, exc)
        return PolicyTable(rules)

    def reload(self) -> bool:
        """Read the policies again when their version moved; True when it did."""
        version = _version_of(self._store.get(_VERSION))
        if version == self._version:
            return False
        version_doc, docs = self._read()
        self._install(_version_of(version_doc), self._table(docs))
        return True

    def _install(self, version: int, table: PolicyTable) -> None:
        """Enforce ``table``, read at ``version``, unless a newer one is in force."""
        with self._lock:
            if version <= self._version:
                return
            old, self.table, self._version = self.table, table, version
            rules = {**old.rules, **table.rules}
            changed = [p for p in rules if old.rules.get(p) != table.rules.get(p)]
            # Under the lock: two changes reach the resolver in the order they were made.
            self._files.set_policies(table, changed)
        if changed:
            log.info("policies changed on %s", ", ".join(changed))

    def _follow(self, interval: float) -> None:
        """Read the version key every ``interval`` seconds until :meth:`close`; while the
        store does not answer, the policies stay as they were."""
        failing = False
        while not self._stop.wait(interval):
            try:
                self.reload()
            except (OSError, ValueError) as exc:
                if not failing:
                    log.warning("policies not read again (kept as they were): %s", exc)
                failing = True
            except Exception:
                log.exception("policies not read again (kept as they were)")
                failing = True
            else:
                if failing:
                    log.info("policies read again")
                failing = False

    # ----------------------------------------------------------------- ops

    def _mount_of(self, path: str) -> Mount:
        """The mount serving ``path`` (a shared mount table read again first when none
        does); ``FileNotFoundError`` when none does."""
        try:
            return self._files.mount_of(path)[0]
        except FileNotFoundError:
            self._files.mounts()
            return self._files.mount_of(path)[0]

    def _change(
        self, path: str, change: Callable[[Policy | None, Mapping[str, Policy]], Policy]
    ) -> dict:
        """Replace the policy at ``path`` by ``change(current policy, every rule)`` with
        compare-and-set on the version key, again while other writers win; the rule
        after. The current policy is None where no rule is stored, empty where the stored
        one cannot be read (a change replaces it)."""
        key = _RULES + path
        for _ in range(_ATTEMPTS):
            version_doc, docs = self._read()
            rules = self._table(docs).rules
            policy = change(rules.get(path, Policy() if path in docs else None), rules)
            version = _version_of(version_doc) + 1
            new = _rule(path, policy)
            if self._store.compare_and_set(
                {_VERSION: (version_doc, {"version": version}), key: (docs.get(path), new)}
            ):
                self._install(version, PolicyTable({**rules, path: policy}))
                return {"path": path, "policy": policy.to_json()}
        raise OSError(
            errno.EAGAIN, f"policy on {path}: other changes kept winning the race; try again"
        )

    def set(self, path: str, fields: Mapping[str, Any]) -> dict:
        """Set ``fields`` of the policy at ``path`` (other fields kept); the rule after.

        Raises
        ------
        ValueError
            A bad path, field or value, a field this version does not enforce, no field,
            or ``path`` under no mount.
        OSError
            ``ENOSPC`` when :data:`MAX_POLICIES` prefixes have one already.
        """
        path = normalize_path(path)
        policy = Policy.from_fields(fields)
        if not policy.to_json():
            raise ValueError(f"policy on {path}: no field given")
        check_enforced(policy)
        try:
            self._mount_of(path)
        except FileNotFoundError:
            raise ValueError(
                f"policy on {path}: the path is under no mount (see `shoal mount ls`)"
            ) from None
        if policy.quota is not None and self.pinned_bytes is not None:
            pinned = self.pinned_bytes(path)
            if policy.quota < pinned:
                raise ValueError(
                    f"quota: {policy.quota} bytes is below the {pinned} bytes pinned under "
                    f"{path} on this worker; unpin them first or give a larger quota"
                )

        def change(current: Policy | None, rules: Mapping[str, Policy]) -> Policy:
            if current is None and len(rules) >= MAX_POLICIES:
                raise OSError(
                    errno.ENOSPC,
                    f"policy on {path}: {MAX_POLICIES} prefixes have a policy already; "
                    "remove some first",
                )
            return policy if current is None else current.merged(policy)

        return self._change(path, change)

    def remove(self, path: str, names: Iterable[str]) -> dict:
        """Remove the fields ``names`` (every field when none) of the policy at ``path``;
        the rule after (its ``policy`` empty when none is left).

        Raises
        ------
        ValueError
            A bad path or an unknown field.
        FileNotFoundError
            No policy at ``path``, or it sets none of ``names``.
        """
        path = normalize_path(path)
        drop = [field_name(n) for n in names]

        def change(current: Policy | None, rules: Mapping[str, Policy]) -> Policy:
            if current is None:
                raise FileNotFoundError(
                    errno.ENOENT, f"no policy on {path} (see `shoal policy ls`)", path
                )
            if drop and not set(drop) & set(current.to_json()):
                raise FileNotFoundError(
                    errno.ENOENT, f"the policy on {path} sets none of {', '.join(drop)}", path
                )
            return current.without(drop) if drop else Policy()

        return self._change(path, change)

    def rules(self) -> list[dict]:
        """Every policy in force, sorted by path: ``{"path": ..., "policy": {...}}``."""
        return [{"path": p, "policy": policy.to_json()} for p, policy in self.table.rules.items()]

    def effective(self, path: str) -> dict:
        """The policy in force at ``path`` (see :func:`~shoal.control._policy.effective`);
        ``FileNotFoundError`` when ``path`` is under no mount."""
        path = normalize_path(path)
        return effective(self.table, path, self._mount_of(path))

    def close(self) -> None:
        """Stop following other workers' changes."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
