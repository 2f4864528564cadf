"""The status reply, and the JSON of it that `status --json` prints, kept between requests."""

from __future__ import annotations

import itertools
from typing import Callable

import msgspec

from .. import protocol as p


class JsonPrefix:
    """The JSON of the leading records of an insertion-ordered dict that are done changing (a commit always,
    a job once finished, an attempt once ended), kept between `status --json` requests: over 10,000 jobs the
    next request copies bytes instead of encoding them. Every change to a record goes through the dispatcher's
    ``_save_*`` (what the store is not told of, it would lose), which reports it here: a change to a record
    inside the prefix drops the prefix."""

    def __init__(self, done: Callable[[msgspec.Struct], bool]):
        self.done = done
        self.keys: set = set()
        self.parts: list[bytes] = []  # the prefix's records as JSON array items, without the brackets

    def changed(self, key) -> None:
        if key in self.keys:
            self.keys.clear()
            self.parts.clear()

    def array(self, records: dict) -> msgspec.Raw:
        rest = itertools.islice(records.items(), len(self.keys), None)
        grown = list(itertools.takewhile(lambda item: self.done(item[1]), rest))
        if grown:
            self.parts.append(p.to_json_bytes([record for _, record in grown])[1:-1])
            self.keys.update(key for key, _ in grown)
        tail = p.to_json_bytes(list(itertools.islice(records.values(), len(self.keys), None)))[1:-1]
        return msgspec.Raw(b"[" + b",".join(part for part in (*self.parts, tail) if part) + b"]")
