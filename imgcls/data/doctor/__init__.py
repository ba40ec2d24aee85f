"""The data doctor: finds what would spoil a training run before it starts.

Broken files (undecodable, truncated, zero-byte, not images, decompression bombs), odd images (CMYK,
16-bit, palette with transparency, animated, EXIF-rotated, extreme aspect ratios, tiny), class counts and
imbalance, classes missing from a split, exact duplicates (same bytes or same pixels) and near-duplicates
(a 64-bit difference hash) within a split and across splits (leakage), and the per-channel mean/std.

- images: what each file or tensor says about itself   - findings: those facts turned into findings
- records: Finding / Record / DataReport                - checks: check, leakage, duplicate_groups
"""

from imgcls.data.doctor.checks import check, duplicate_groups, leakage
from imgcls.data.doctor.records import DataReport, Finding, Record

__all__ = ["check", "leakage", "duplicate_groups", "DataReport", "Finding", "Record"]
