"""The report page: a self-contained report.html of headed sections (images are PNG files beside it, named
relatively, so the folder opens offline and can be moved as a whole)."""
from __future__ import annotations

import html
import os

_CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "img{max-width:100%;border:1px solid #ddd;margin:.3em 0}table{border-collapse:collapse;font-size:.9em}"
        "td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f3f3f3}"
        "h2{border-bottom:2px solid #2a9d8f;padding-bottom:.2em}pre{background:#f6f6f6;padding:.6em;overflow:auto}"
        ".note{color:#555;font-size:.92em}")


def write_html(out: str, title: str, sections: list[tuple[str, str]]) -> str:
    """report.html: sections of (heading, HTML body); images are referenced by relative file name."""
    parts = [(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>")]
    for head, body in sections:
        parts.append(f"<h2>{html.escape(head)}</h2>{body}")
    parts.append("</body></html>")
    path = os.path.join(out, "report.html")
    with open(path, "w") as f:
        f.write("\n".join(parts))
    return path


def table(rows: list[dict], cols: list[str], fmt: dict[str, str] | None = None) -> str:
    """An HTML table of ``rows`` (dicts) in the order of ``cols``; ``fmt`` maps a column to a format string."""
    fmt = fmt or {}
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = []
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(f"<td>{html.escape(fmt[c].format(v) if c in fmt and v != '' else str(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def img(path: str, note: str = "") -> str:
    """An image of the report folder (by its file name), with an optional explanatory note above it."""
    name = os.path.basename(path)
    n = f"<p class='note'>{html.escape(note)}</p>" if note else ""
    return f"{n}<img src='{html.escape(name)}' alt='{html.escape(name)}'>"


def pre(text: str) -> str:
    return f"<pre>{html.escape(text)}</pre>"
