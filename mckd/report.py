"""Figures as text: the one number format and the Markdown tables of mckd's reports (results.md, mckd-eval, sweeps)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def score(value: float | None) -> str:
    """An mIoU, IoU or accuracy to four decimals; '-' where there is none."""
    return "-" if value is None else f"{value:.4f}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]], right: Sequence[int] = ()) -> list[str]:
    """The lines of a Markdown table; the columns numbered in `right` (numbers) are right-aligned."""
    rule = ["---:" if i in right else "---" for i in range(len(header))]
    return [f"| {' | '.join(map(str, line))} |" for line in (header, rule, *rows)]
