"""evaluation.report: self-contained HTML with escaped text, tables and base64 PNG figures, written atomically."""

from __future__ import annotations

import base64
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from mrlearn.evaluation.report import Report, format_value  # noqa: E402


def test_report_embeds_tables_figures_and_escapes(tmp_path):
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    png = tmp_path / "fig.png"
    fig.savefig(png)
    report = Report("Demo <b>&</b>")
    report.add_text("first paragraph\n\nsecond <script>", title="Setup")
    report.add_table("Metrics", [{"method": "U-Net", "psnr": 31.23456, "ssim": float("nan")}, {"method": "ZF", "psnr": 25.0, "extra": 3}])
    report.add_figure("From a figure", fig, caption="a caption")
    report.add_figure("From a file", png)
    plt.close(fig)
    path = report.write(tmp_path / "out")
    html = path.read_text()
    assert path.name == "report.html" and not list(path.parent.glob("*.tmp"))
    assert "Demo &lt;b&gt;&amp;&lt;/b&gt;" in html and "<script>" not in html and "second &lt;script&gt;" in html
    assert html.count("<p>") >= 2
    assert "<th>method</th><th>psnr</th><th>ssim</th><th>extra</th>" in "".join(html.split())
    assert "31.23" in html and "<td>-</td>" in html  # NaN shown as '-'
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == 2
    assert base64.b64decode(images[1]) == png.read_bytes()
    assert all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    assert "a caption" in html and html.index("Setup") < html.index("Metrics") < html.index("From a file")


def test_report_rejects_missing_or_non_png_figures(tmp_path):
    report = Report("x")
    with pytest.raises(FileNotFoundError):
        report.add_figure("missing", tmp_path / "nope.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="not a PNG"):
        report.add_figure("bad", bad)


def test_format_value():
    assert format_value(0.123456789) == "0.1235" and format_value(3) == "3" and format_value("a") == "a"
    assert format_value(float("nan")) == "-" and format_value(True) == "True"


def _png_size(png: bytes) -> tuple[int, int]:
    import struct

    assert png.startswith(b"\x89PNG")
    return struct.unpack(">II", png[16:24])  # IHDR width, height


def test_image_grid_panels_are_readable(tmp_path):
    import numpy as np

    from mrlearn.evaluation.report import Strong

    rng = np.random.default_rng(0)
    target = rng.random((40, 30)).astype(np.float32)
    panels = [("target", target), ("input", 0.5 * target)] + [(f"arm{i}", target) for i in range(9)]  # 11 panels
    report = Report("grid")
    report.add_images("Examples", {"PD": panels, "T2": [("target", np.ones((300, 300)))]}, caption="same scale")
    report.add_table("t", [{"arm": "a", "convergence": Strong("not converged (1/3 runs)"), "other": "converged"}])
    html = report.to_html()
    pngs = [base64.b64decode(i) for i in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]
    assert len(pngs) == 12  # one image per panel: a wrapping grid, not one squeezed strip
    sizes = [_png_size(p) for p in pngs]
    assert all(w >= 256 for w, _ in sizes) and sizes[0] == (270, 360)  # 30 px wide x 9 (nearest neighbour)
    assert sizes[-1] == (300, 300)  # already wide enough: not enlarged
    assert pngs[0] == pngs[2] != pngs[1]  # one grey scale per row: equal images give equal panels
    assert html.count('class="grid"') == 2 and "repeat(auto-fill, minmax(260px" in html
    assert "<td><strong>not converged (1/3 runs)</strong></td>" in html and "<td>converged</td>" in html
    with pytest.raises(ValueError, match="2-D"):
        report.add_images("bad", {"x": [("a", np.zeros((2, 3, 4)))]})
