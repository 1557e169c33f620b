"""What went wrong while ingesting a catalog, kept as data so the CLI can print it and the index can
store it next to the manifest.

Bad rows never stop a run: each one becomes an :class:`IngestIssue` saying which file, row, id and
field it was, why, and what was done about it. The store adds more issues at encode time (for
example a corrupt image found while encoding is ``"indexed without image"``).
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

#: Every action an issue may record, in the order the summary lists them.
ACTIONS: tuple[str, ...] = (
    "skipped",
    "replaced",
    "indexed without image",
    "indexed without video",
    "warning",
)


@dataclass(frozen=True)
class IngestIssue:
    """One problem with one row (or with the whole file when ``row`` is None).

    ``row`` is 1-based: the line number for JSON Lines and CSV (the CSV header is line 1), the
    element number for a JSON array, the row number for Parquet. ``file`` is None for issues not
    tied to a file (an item sent through the API, a problem found while encoding).
    """

    file: str | None
    row: int | None
    id: str | None
    field: str | None
    reason: str
    action: str

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown ingest action {self.action!r}; expected one of {ACTIONS}")

    def location(self) -> str:
        file = self.file if self.file is not None else "-"
        return file if self.row is None else f"{file}:{self.row}"

    def __str__(self) -> str:
        who = f" id={self.id}" if self.id is not None else ""
        what = f" [{self.field}]" if self.field else ""
        return f"{self.location()}{who}{what}: {self.reason} ({self.action})"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class IngestReport:
    """Collects issues and counts for one ingest run (one or several catalog files).

    Counters: ``rows_read`` (data rows seen, blank lines excluded), ``accepted`` (items handed to
    the indexer), ``skipped`` (rows dropped) and ``replaced`` (rows superseded by a later row with
    the same id). After a full read ``rows_read == accepted + skipped + replaced``.
    A lock guards every mutation so an encoder thread pool may add issues too.
    """

    def __init__(self) -> None:
        self.issues: list[IngestIssue] = []
        self.files: list[str] = []
        self.rows_read = 0
        self.accepted = 0
        self._lock = threading.Lock()

    # --- recording

    def add(
        self,
        file: str | os.PathLike[str] | IngestIssue | None,
        row: int | None = None,
        id: str | None = None,
        field: str | None = None,
        reason: str = "",
        action: str = "warning",
    ) -> IngestIssue:
        """Record an issue; pass either a ready :class:`IngestIssue` or its fields."""
        if isinstance(file, IngestIssue):
            issue = file
        else:
            if not reason:
                raise ValueError("an ingest issue needs a reason")
            issue = IngestIssue(None if file is None else os.fspath(file), row, id, field, reason, action)
        with self._lock:
            self.issues.append(issue)
        return issue

    def add_file(self, file: str | os.PathLike[str]) -> None:
        with self._lock:
            if str(file) not in self.files:
                self.files.append(str(file))

    def count_row(self, n: int = 1) -> None:
        with self._lock:
            self.rows_read += n

    def count_accepted(self, n: int = 1) -> None:
        with self._lock:
            self.accepted += n

    # --- reading

    @property
    def skipped(self) -> int:
        return sum(1 for i in self.issues if i.action == "skipped")

    @property
    def replaced(self) -> int:
        return sum(1 for i in self.issues if i.action == "replaced")

    def counts(self) -> dict[str, int]:
        """Issues per action, every action present (zero when none)."""
        c = Counter(i.action for i in self.issues)
        return {a: c.get(a, 0) for a in ACTIONS}

    def by_action(self, action: str) -> list[IngestIssue]:
        return [i for i in self.issues if i.action == action]

    def __len__(self) -> int:
        return len(self.issues)

    def summary(self, max_issues: int = 20) -> str:
        """Human-readable text for the CLI: totals, then the first ``max_issues`` issues."""
        n_files = len(self.files)
        lines = [
            f"Ingest: {_plural(n_files, 'catalog file')}, {_plural(self.rows_read, 'row')} read, "
            f"{_plural(self.accepted, 'item')} accepted, {self.skipped:,} skipped, {self.replaced:,} replaced"
        ]
        if not self.issues:
            lines.append("No issues.")
            return "\n".join(lines)
        per_action = ", ".join(f"{n:,} {a}" for a, n in self.counts().items() if n)
        lines.append(f"{_plural(len(self.issues), 'issue')}: {per_action}")
        shown = self.issues[:max_issues]
        rows = [(i.location(), i.id or "", i.field or "", i.action, i.reason) for i in shown]
        headers = ("where", "id", "field", "action", "reason")
        widths = [min(max(len(h), *(len(r[k]) for r in rows)), 48) for k, h in enumerate(headers[:4])]

        def fmt(cells: tuple[str, ...]) -> str:
            # Paths keep their end (file name and row), other cells their start.
            clipped = [
                _clip(c, w, keep_end=(k == 0)) for k, (c, w) in enumerate(zip(cells[:4], widths, strict=True))
            ]
            fixed = "  ".join(c.ljust(w) for c, w in zip(clipped, widths, strict=True))
            return f"  {fixed}  {cells[4]}"

        lines.append(fmt(headers))
        lines.extend(fmt(r) for r in rows)
        if len(self.issues) > len(shown):
            lines.append(f"  ... {len(self.issues) - len(shown):,} more")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """``{"files", "counts", "issues"}``; ``counts`` alone is small enough for a manifest."""
        return {
            "files": list(self.files),
            "counts": {
                "rows_read": self.rows_read,
                "accepted": self.accepted,
                "issues": len(self.issues),
                **self.counts(),
            },
            "issues": [i.to_dict() for i in self.issues],
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write JSON atomically, so a crash never leaves a half-written report in an index."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        text = json.dumps(self.to_dict(), ensure_ascii=False, indent=1)
        # a file name that is not UTF-8 arrives as lone surrogates: kept as JSON "\udce9" escapes
        tmp.write_bytes(text.encode("utf-8", "backslashreplace"))
        os.replace(tmp, path)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IngestReport:
        report = cls()
        report.files = [str(f) for f in data.get("files", [])]
        counts = data.get("counts", {})
        report.rows_read = int(counts.get("rows_read", 0))
        report.accepted = int(counts.get("accepted", 0))
        report.issues = [IngestIssue(**i) for i in data.get("issues", [])]
        return report

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> IngestReport:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def _clip(text: str, width: int, *, keep_end: bool = False) -> str:
    if len(text) <= width:
        return text
    return "…" + text[len(text) - width + 1 :] if keep_end else text[: width - 1] + "…"


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"
