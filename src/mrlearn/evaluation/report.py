"""One HTML report writer for every study: tables, figures and text in one self-contained file.

    report = Report("U-Net vs zero-filled")
    report.add_text("Embedded dataset, PD contrast, 4x random masks.")
    report.add_table("Metrics", [{"method": "U-Net", "psnr": 31.2}, ...])
    report.add_figure("Examples", fig_or_png_path, caption="target / zero-filled / U-Net / error")
    report.write("runs/demo")  # -> runs/demo/report.html

Figures (matplotlib figures or PNG files) are embedded as base64 data URIs, so the HTML file stands alone.
Everything is HTML-escaped. The file is written atomically (tmp file + ``os.replace``). Sections appear in the
order they were added; later code (other issues) just adds more sections to the same report.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import math
import os
from pathlib import Path
from typing import Any, Sequence

_STYLE = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; line-height: 1.45; padding: 0 1em; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; } h2 { margin-top: 1.6em; color: #333; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: 14px; }
th, td { border: 1px solid #bbb; padding: 4px 10px; text-align: right; } th { background: #eee; }
td:first-child, th:first-child { text-align: left; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 13px; color: #555; } .meta { color: #777; font-size: 12px; }
pre { background: #f6f6f6; padding: .6em; overflow-x: auto; }
"""


def format_value(value: Any, digits: int = 4) -> str:
    """Numbers with ``digits`` significant digits (NaN as ``-``), everything else as text."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.{digits}g}"
    return str(value)


class Report:
    """An HTML report assembled from sections (text, tables, figures)."""

    def __init__(self, title: str):
        self.title = str(title)
        self.sections: list[tuple[str, Any]] = []

    def add_text(self, text: str, title: str | None = None, preformatted: bool = False) -> "Report":
        """A paragraph (blank lines separate paragraphs) or a ``<pre>`` block."""
        self.sections.append(("text", (title, str(text), preformatted)))
        return self

    def add_table(self, title: str, rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None,
                  caption: str | None = None) -> "Report":
        """A table from a list of dicts (columns: ``columns`` or the keys in first-seen order)."""
        rows = [dict(r) for r in rows]
        if columns is None:
            cols: list[str] = []
            for r in rows:
                cols.extend(k for k in r if k not in cols)
            columns = cols
        self.sections.append(("table", (title, list(columns), rows, caption)))
        return self

    def add_figure(self, title: str, figure: Any, caption: str | None = None) -> "Report":
        """A matplotlib figure (rendered to PNG now) or the path of a PNG file."""
        if hasattr(figure, "savefig"):
            buf = io.BytesIO()
            figure.savefig(buf, format="png", dpi=110, bbox_inches="tight")
            png = buf.getvalue()
        else:
            path = Path(figure)
            if not path.is_file():
                raise FileNotFoundError(f"report figure {path} not found")
            png = path.read_bytes()
        if not png.startswith(b"\x89PNG"):
            raise ValueError(f"report figure {title!r} is not a PNG image")
        self.sections.append(("figure", (title, png, caption)))
        return self

    def to_html(self) -> str:
        esc = html.escape
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{esc(self.title)}</title>",
                 f"<style>{_STYLE}</style></head><body>", f"<h1>{esc(self.title)}</h1>",
                 f"<p class=\"meta\">written {stamp} by mrlearn</p>"]
        for kind, payload in self.sections:
            if kind == "text":
                title, text, pre = payload
                if title:
                    parts.append(f"<h2>{esc(title)}</h2>")
                if pre:
                    parts.append(f"<pre>{esc(text)}</pre>")
                else:
                    parts.extend(f"<p>{esc(p.strip())}</p>" for p in text.split("\n\n") if p.strip())
            elif kind == "table":
                title, columns, rows, caption = payload
                parts.append(f"<h2>{esc(title)}</h2><table><thead><tr>")
                parts.extend(f"<th>{esc(str(c))}</th>" for c in columns)
                parts.append("</tr></thead><tbody>")
                for r in rows:
                    parts.append("<tr>" + "".join(f"<td>{esc(format_value(r.get(c, '')))}</td>" for c in columns) + "</tr>")
                parts.append("</tbody></table>")
                if caption:
                    parts.append(f"<p class=\"meta\">{esc(caption)}</p>")
            elif kind == "figure":
                title, png, caption = payload
                data = base64.b64encode(png).decode("ascii")
                parts.append(f"<h2>{esc(title)}</h2><figure><img alt=\"{esc(title)}\" src=\"data:image/png;base64,{data}\">")
                if caption:
                    parts.append(f"<figcaption>{esc(caption)}</figcaption>")
                parts.append("</figure>")
        parts.append("</body></html>\n")
        return "\n".join(parts)

    def write(self, out_dir: str | Path, name: str = "report.html") -> Path:
        """Write ``out_dir/name`` atomically; returns its path."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = out / name
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_html(), encoding="utf-8")
        os.replace(tmp, path)
        return path
