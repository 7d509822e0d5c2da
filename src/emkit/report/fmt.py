"""How the report writes a value, a rate, a p-value and a table (shared by every section)."""

from __future__ import annotations

import html
from typing import Any


def esc(x: Any) -> str:
    """HTML-escape any value (quotes too), for text and attribute values alike."""
    return html.escape("" if x is None else str(x), quote=True)


def table(head: list[str], rows: list[list[Any]], num: set[int] | None = None) -> str:
    """An HTML table, every cell escaped; the columns in ``num`` are right-aligned numbers."""
    num = num or set()
    h = "".join(f"<th>{esc(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(f'<td class="num">{esc(c)}</td>' if i in num else f"<td>{esc(c)}</td>"
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def fmt_rate(r: dict | None, n: bool = True) -> str:
    """``9.8% [6.9, 13.6] (n = 200)``; ``n/a (no valid answers)`` when empty."""
    if not r or r.get("value") is None:
        return "n/a (no valid answers)"
    s = f"{100 * r['value']:.1f}% [{100 * r['lo']:.1f}, {100 * r['hi']:.1f}]"
    return f"{s} (n = {r['n']})" if n else s


def fmt_p(p: float | None) -> str:
    """``p < 0.001``, ``p = 0.012`` or ``p = 0.34``; ``p = n/a`` when there is no test."""
    if p is None:
        return "p = n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}" if p < 0.1 else f"p = {p:.2f}"
