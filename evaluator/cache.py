"""On-disk judgement cache: a re-run (or a second model on the same references) costs nothing.

Keyed by (task, sample id, the answer judged, judge model, judge prompt hash): the same answer
to the same question by the same judge and prompt is never judged twice; a new prompt version
or judge model is a new key. Only parsed judgements are stored (the judge decides that). SQLite (WAL) so an evaluation in one process and a report in
another can share the file; writes are small and rare next to model calls.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any


def judgement_key(task: str, sample_id: str, answer: str, judge_model: str, prompt_hash: str) -> str:
    blob = json.dumps([task, sample_id, answer, judge_model, prompt_hash], ensure_ascii=False)
    return hashlib.blake2b(blob.encode(), digest_size=20).hexdigest()


class JudgeCache:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        # a cache: losing the last judgements to a power cut costs a re-ask, while an fsync per
        # judgement (6 ms here) would stall the event loop the requests run on
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS judgements (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self._db.commit()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM judgements WHERE key = ?", (key,)).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        return json.loads(row[0])

    def put(self, key: str, value: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO judgements (key, value) VALUES (?, ?)",
                             (key, json.dumps(value, ensure_ascii=False)))
            self._db.commit()

    def close(self) -> None:
        with self._lock:
            self._db.close()
