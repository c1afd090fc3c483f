"""Placement: which workers own a chunk of a file.

Rendezvous (highest-random-weight) hashing, weighted by capacity: every (key, worker) pair
gets a pseudo-random score, and a key belongs to the workers with the highest scores. When
a worker joins or leaves, only the keys it wins or held move (about 1/N of them). Clients
and workers call the same function, so they agree without asking anyone.

With weights, the score is ``-weight / ln(u)`` for ``u`` uniform in (0, 1): a worker with
twice the weight wins twice as many keys.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Node", "chunk_key", "place", "place_many"]

_MASK = (1 << 64) - 1


@dataclass(frozen=True)
class Node:
    """A placement candidate: a worker's stable id and its weight (e.g. capacity in bytes)."""

    id: str
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"Node.id must be a non-empty str, got {self.id!r}")
        if isinstance(self.weight, bool) or not self.weight > 0 or math.isinf(self.weight):
            raise ValueError(f"Node.weight must be a positive finite number, got {self.weight!r}")


def _hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def chunk_key(file_id: bytes | str, chunk: int) -> int:
    """The 64-bit placement key of chunk number ``chunk`` of a file."""
    if isinstance(file_id, str):
        file_id = file_id.encode()
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 0:
        raise ValueError(f"chunk index must be an int >= 0, got {chunk!r}")
    return _hash64(file_id + b"\0" + chunk.to_bytes(8, "little"))


def _mix(x: int) -> int:
    # splitmix64 finaliser: spreads the bits of key ^ node into a uniform 64-bit value
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & _MASK
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB & _MASK
    return x ^ (x >> 31)


def _mix_np(x: np.ndarray) -> np.ndarray:
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _score(mixed: int, weight: float) -> float:
    u = ((mixed >> 11) + 0.5) / (1 << 53)  # in (0, 1), never 0 or 1
    return -weight / math.log(u)


def _check(nodes: Sequence[Node], replicas: int) -> None:
    if not nodes:
        raise ValueError("placement needs at least one worker; none is live")
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise ValueError(f"replicas must be an int >= 1, got {replicas!r}")
    ids = [n.id for n in nodes]
    if len(set(ids)) != len(ids):
        raise ValueError("placement: worker ids must be unique")


def place(key: int, nodes: Sequence[Node], replicas: int = 1) -> list[Node]:
    """The ``replicas`` workers (fewer if there are fewer) that own ``key``, best first."""
    _check(nodes, replicas)
    scored = sorted(
        ((_score(_mix(key ^ _hash64(n.id.encode())), n.weight), n.id, n) for n in nodes),
        reverse=True,
    )
    return [n for _, _, n in scored[:replicas]]


def place_many(keys: np.ndarray, nodes: Sequence[Node], replicas: int = 1) -> np.ndarray:
    """Vectorised :func:`place`: an ``(len(keys), min(replicas, len(nodes)))`` array of
    indexes into ``nodes``, best first; identical to calling :func:`place` per key."""
    _check(nodes, replicas)
    keys = np.asarray(keys, dtype=np.uint64).ravel()
    node_hash = np.array([_hash64(n.id.encode()) for n in nodes], dtype=np.uint64)
    weights = np.array([n.weight for n in nodes], dtype=np.float64)
    k = min(replicas, len(nodes))
    out = np.empty((len(keys), k), dtype=np.intp)
    step = max(1, (1 << 20) // len(nodes))  # bounded temporaries: ~1M scores at a time
    for start in range(0, len(keys), step):
        block = keys[start : start + step]
        with np.errstate(over="ignore"):
            mixed = _mix_np(block[:, None] ^ node_hash[None, :])
        u = ((mixed >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)
        scores = -weights[None, :] / np.log(u)
        if k == 1:
            out[start : start + step, 0] = np.argmax(scores, axis=1)
            continue
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        out[start : start + step] = np.take_along_axis(top, order, axis=1)
    return out
