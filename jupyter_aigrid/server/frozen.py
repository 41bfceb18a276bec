"""Immutable mappings that share what they did not change (the snapshot's and the history's)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

#: The empty mapping every empty field shares.
EMPTY: Mapping = MappingProxyType({})


class FrozenMap(Mapping):
    """An immutable mapping whose ``set``/``delete`` return new maps cheaply: changes sit in
    a small overlay over a shared base dict, folded into a new base once they pile up. A
    simulated cluster with thousands of running gangs would otherwise copy them all at
    every launch and every exit."""

    __slots__ = ("_added", "_base", "_removed")
    _FOLD_AT = 64

    def __init__(self, base=None, added=None, removed=frozenset()) -> None:
        self._base: dict = base if base is not None else {}
        self._added: dict = added if added is not None else {}
        self._removed: frozenset = removed

    def __getitem__(self, key):
        if key in self._added:
            return self._added[key]
        if key in self._removed:
            raise KeyError(key)
        return self._base[key]

    def __contains__(self, key) -> bool:
        return key in self._added or (key not in self._removed and key in self._base)

    def __iter__(self):
        removed, added = self._removed, self._added
        for key in self._base:
            if key not in removed and key not in added:
                yield key
        yield from added

    def __len__(self) -> int:
        overlap = sum(1 for k in self._added if k in self._base and k not in self._removed)
        return len(self._base) - len(self._removed) + len(self._added) - overlap

    def set(self, key, value) -> FrozenMap:
        return self._maybe_fold(
            FrozenMap(self._base, {**self._added, key: value}, self._removed - {key})
        )

    def delete(self, key) -> FrozenMap:
        if key not in self:
            raise KeyError(key)
        added = {k: v for k, v in self._added.items() if k != key}
        removed = self._removed | {key} if key in self._base else self._removed
        return self._maybe_fold(FrozenMap(self._base, added, removed))

    def _maybe_fold(self, m: FrozenMap) -> FrozenMap:
        if len(m._added) + len(m._removed) < self._FOLD_AT:
            return m
        return FrozenMap(dict(m.items()))

    def __repr__(self) -> str:
        return f"FrozenMap({dict(self.items())!r})"
