"""On-disk cache of reference log-probs, so a second job on overlapping pairs skips them.

The key hashes what determines the number: the model's identity, the deployed adapter's
identity (the reference is base + that adapter), the dtype, and the pair's token ids (which
follow from its text, the tokenizer, truncation and the tokenization rule, whose version is in
the key too: entries written under an earlier rule are never read). SQLite, so several workers
can share it.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

from training.engine.data import TOKENIZATION_RULE, EncodedPair


class RefLogpCache:
    def __init__(self, directory: Path, *, namespace: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "ref_logps.sqlite3"
        self.namespace = namespace  # model identity + adapter identity + dtype
        self._db = sqlite3.connect(self.path, timeout=30)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS ref_logps "
            "(key TEXT PRIMARY KEY, chosen REAL NOT NULL, rejected REAL NOT NULL)"
        )
        self._db.commit()

    def key(self, pair: EncodedPair) -> str:
        text = (
            f"rule {TOKENIZATION_RULE}|{self.namespace}|"
            f"{pair.prompt_ids}|{pair.chosen_ids}|{pair.rejected_ids}"
        )
        return hashlib.sha256(text.encode()).hexdigest()

    def get_many(self, pairs: list[EncodedPair]) -> dict[int, tuple[float, float]]:
        """Cached (chosen, rejected) by pair index, for the pairs that have an entry."""
        found = {}
        for pair in pairs:
            row = self._db.execute(
                "SELECT chosen, rejected FROM ref_logps WHERE key = ?", (self.key(pair),)
            ).fetchone()
            if row is not None:
                found[pair.index] = (row[0], row[1])
        return found

    def put_many(self, entries: list[tuple[EncodedPair, float, float]]) -> None:
        self._db.executemany(
            "INSERT OR REPLACE INTO ref_logps (key, chosen, rejected) VALUES (?, ?, ?)",
            [(self.key(pair), chosen, rejected) for pair, chosen, rejected in entries],
        )
        self._db.commit()

    def close(self) -> None:
        self._db.close()
