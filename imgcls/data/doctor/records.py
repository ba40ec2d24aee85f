"""What the data doctor finds, as records: a `Finding` (one kind of problem, its severity and count) holds
`Record`s (the images or classes it names), and a `DataReport` holds the findings and the dataset's
numbers. Reports, pages and the training refusal render these fields; nothing parses a string back."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

LIST_LIMIT = 200  # records kept per finding in the report (all are counted)


@dataclass
class Record:
    """One image (or class) a finding names.

    `split` is "" for an entry dropped before the data was split (a manifest row, a broken link); a
    duplicate pair names its second image in `other` / `other_split`; a class-level finding names the
    class in `label` and no path.
    """

    kind: str
    split: str
    path: str = ""
    reason: str = ""
    other: str = ""
    other_split: str = ""
    label: str = ""

    @property
    def paths(self) -> list[str]:
        """The image files (or in-memory names such as train[3]) this record names."""
        return [p for p in (self.path, self.other) if p]

    def text(self) -> str:
        """One line: `path: reason`, `split: a <-> split: b` for a pair, or the class name."""
        if self.other:
            pair = f"{self.split}: {self.path} <-> {self.other_split}: {self.other}"
            return f"{pair} ({self.reason})" if self.reason else pair
        if self.label and not self.path:
            return self.label
        return f"{self.path}: {self.reason}" if self.reason else self.path


@dataclass
class Finding:
    severity: str  # "error" (exit 1) or "warning"
    kind: str
    message: str
    items: list[Record] = field(default_factory=list)  # the first LIST_LIMIT of them
    count: int = 0


def finding(severity: str, kind: str, message: str, records: list[Record]) -> Finding:
    return Finding(severity, kind, message, records[:LIST_LIMIT], len(records))


@dataclass
class DataReport:
    dataset: str
    num_images: int
    class_counts: dict[str, dict[str, int]]
    stats: dict[str, Any]
    findings: list[Finding]
    seconds: float = 0.0
    labels: dict[str, Any] | None = None  # multi-label data: label-set statistics (label_set_stats)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": not self.errors}
