"""One HTML report writer for every study: tables, figures and text in one self-contained file.

    report = Report("U-Net vs zero-filled")
    report.add_text("Embedded dataset, PD contrast, 4x random masks.")
    report.add_table("Metrics", [{"method": "U-Net", "psnr": 31.2}, ...])
    report.add_figure("Curves", fig_or_png_path, caption="validation PSNR per epoch")
    report.add_images("Examples", {"slice 3": [("target", img), ("zero-filled", zf), ("U-Net", out)]})
    report.write("runs/demo")  # -> runs/demo/report.html

Figures (matplotlib figures or PNG files) and image panels are embedded as base64 data URIs, so the HTML file
stands alone. Image panels (``add_images``) are drawn one PNG per panel, enlarged by an integer factor (nearest
neighbour) to at least ``min_width`` (256) pixels and laid out as a wrapping grid (a few panels per line, never one
squeezed strip); each row of panels shares one grey scale. Everything is HTML-escaped; a table cell given as
:class:`Strong` is shown in bold (warnings such as "not converged"). The file is written atomically
(``mrlearn.io``). Sections appear in the order they were added. Studies, evaluation and the qMRI report use it.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from mrlearn.io import atomic_write_text

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
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr)); gap: 10px; margin: .4em 0 1em; }
.panel { margin: 0; text-align: center; font-size: 13px; } .panel img { width: 100%; min-width: 256px;
         image-rendering: pixelated; border: 1px solid #ddd; } h3 { margin: .8em 0 .2em; font-size: 15px; }
td strong { color: #a00; }
"""


class Strong(str):
    """A table cell shown in bold (e.g. ``Strong("not converged")``)."""


def panel_png(image: Any, vmin: float | None = None, vmax: float | None = None, cmap: str = "gray",
              min_width: int = 256) -> bytes:
    """One 2-D image as a PNG at least ``min_width`` pixels wide (integer nearest-neighbour enlargement).

    ``image``: ``[h, w]`` real array (complex input is shown as magnitude); NaN/Inf are drawn as ``vmin``.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import image as mimage

    arr = np.asarray(image)
    if np.iscomplexobj(arr):
        arr = np.abs(arr)
    arr = np.squeeze(arr).astype(np.float64)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"report image must be 2-D, got shape {np.shape(image)}")
    finite = arr[np.isfinite(arr)]
    lo = float(vmin) if vmin is not None else (float(finite.min()) if finite.size else 0.0)
    hi = float(vmax) if vmax is not None else (float(finite.max()) if finite.size else 1.0)
    if not hi > lo:
        hi = lo + 1.0
    arr = np.where(np.isfinite(arr), arr, lo)
    factor = max(1, math.ceil(min_width / arr.shape[1]))
    if factor > 1:
        arr = np.repeat(np.repeat(arr, factor, axis=0), factor, axis=1)
    buf = io.BytesIO()
    mimage.imsave(buf, arr, cmap=cmap, vmin=lo, vmax=hi, format="png")
    return buf.getvalue()


def format_value(value: Any, digits: int = 4) -> str:
    """Numbers with ``digits`` significant digits (NaN as ``-``), everything else as text."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        value = float(value)
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

    def add_images(self, title: str, rows: Mapping[str, Sequence[tuple[str, Any]]], caption: str | None = None,
                   min_width: int = 256, cmap: str = "gray", shared_scale: bool = True) -> "Report":
        """Image panels in a wrapping grid: ``rows`` maps a row title to ``(label, image)`` panels.

        Each row is drawn on one grey scale ``[min(0, min), max]`` of its panels when ``shared_scale`` (so a
        reconstruction is compared with its target by eye); each panel is at least ``min_width`` px wide.
        """
        drawn: list[tuple[str, list[tuple[str, bytes]]]] = []
        for row_title, panels in rows.items():
            panels = [(str(label), np.asarray(img)) for label, img in panels]
            vmin = vmax = None
            if shared_scale and panels:
                finite = [np.abs(a) if np.iscomplexobj(a) else a for _, a in panels]
                finite = [a[np.isfinite(a)] for a in finite]
                finite = [a for a in finite if a.size]
                if finite:
                    vmin = min(0.0, min(float(a.min()) for a in finite))
                    vmax = max(float(a.max()) for a in finite)
            drawn.append((str(row_title), [(label, panel_png(img, vmin, vmax, cmap, min_width)) for label, img in panels]))
        self.sections.append(("images", (title, drawn, caption)))
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
                    parts.append("<tr>" + "".join(_cell(r.get(c, "")) for c in columns) + "</tr>")
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
            elif kind == "images":
                title, drawn, caption = payload
                parts.append(f"<h2>{esc(title)}</h2>")
                for row_title, panels in drawn:
                    if row_title:
                        parts.append(f"<h3>{esc(row_title)}</h3>")
                    parts.append("<div class=\"grid\">")
                    for label, png in panels:
                        data = base64.b64encode(png).decode("ascii")
                        parts.append(f"<figure class=\"panel\"><img alt=\"{esc(label)}\" "
                                     f"src=\"data:image/png;base64,{data}\"><figcaption>{esc(label)}</figcaption></figure>")
                    parts.append("</div>")
                if caption:
                    parts.append(f"<p class=\"meta\">{esc(caption)}</p>")
        parts.append("</body></html>\n")
        return "\n".join(parts)

    def write(self, out_dir: str | Path, name: str = "report.html") -> Path:
        """Write ``out_dir/name`` atomically; returns its path."""
        return atomic_write_text(Path(out_dir) / name, self.to_html())


def _cell(value: Any) -> str:
    text = html.escape(format_value(value))
    return f"<td><strong>{text}</strong></td>" if isinstance(value, Strong) else f"<td>{text}</td>"
