"""Subordinate id ranges for box user namespaces: one range per owner, never shared, recorded.

Container root of every box of one owner maps into that owner's range, so root in a box is an
unprivileged, otherwise unused host uid, and two owners' boxes never share ids.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from boxd.model import IdRange


class SubidAllocator:
    def __init__(self, path: Path, base: int, size: int) -> None:
        self._path = path
        self._base = base
        self._size = size
        self._slots: dict[int, int] = self._load()

    def _load(self) -> dict[int, int]:
        try:
            data = json.loads(self._path.read_text())
        except FileNotFoundError:
            return {}
        return {int(uid): int(slot) for uid, slot in data.get("slots", {}).items()}

    def _save(self) -> None:
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"base": self._base, "size": self._size,
                                   "slots": {str(k): v for k, v in self._slots.items()}}))
        os.replace(tmp, self._path)

    def range_for(self, owner_uid: int) -> IdRange:
        slot = self._slots.get(owner_uid)
        if slot is None:
            slot = max(self._slots.values(), default=-1) + 1
            if self._base + (slot + 1) * self._size > 2**32 - 2:
                raise RuntimeError("no subordinate id range left for a new owner")
            self._slots[owner_uid] = slot
            self._save()
        return IdRange(self._base + slot * self._size, self._size)
