"""ISMRMRD XML headers of fastMRI files: a minimal writer and a reader of the fields mrlearn uses.

Sizes follow ISMRMRD: ``encodedSpace``/``reconSpace`` matrix ``(x, y, z)`` with x the readout (k-space H) and y the
phase encoding (k-space W); ``encodingLimits/kspace_encoding_step_1`` (centre, maximum) give the acquired
columns ``[left, right)`` of W by fastMRI's rule ``left = W // 2 - centre``, ``right = left + maximum + 1``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from mrlearn.errors import input_error

ISMRMRD_NS = "http://www.ismrm.org/ISMRMRD"


def make_ismrmrd_header(
    kspace_hw: tuple[int, int],
    recon_hw: tuple[int, int],
    enc_center: int | None = None,
    enc_max: int | None = None,
    fov_mm: tuple[float, float, float] | None = None,
) -> str:
    """A minimal valid ISMRMRD XML header for a 2-D Cartesian acquisition.

    ``kspace_hw`` = encoded matrix (readout x, phase y); ``recon_hw`` = recon matrix; ``enc_center``/``enc_max``
    are the encodingLimits of kspace_encoding_step_1 (default: all W columns acquired, centre ``W // 2``).
    ``fov_mm`` is the encoded field of view (default 1 mm per encoded sample); the recon FOV scales with the
    matrix ratio.
    """
    (h, w), (rh, rw) = (int(kspace_hw[0]), int(kspace_hw[1])), (int(recon_hw[0]), int(recon_hw[1]))
    center = w // 2 if enc_center is None else int(enc_center)
    maximum = w - 1 if enc_max is None else int(enc_max)
    fx, fy, fz = (float(h), float(w), 1.0) if fov_mm is None else tuple(float(v) for v in fov_mm)
    rfx, rfy = fx * rh / h, fy * rw / w

    def space(tag: str, mx: int, my: int, fovx: float, fovy: float) -> str:
        return (
            f"<{tag}><matrixSize><x>{mx}</x><y>{my}</y><z>1</z></matrixSize>"
            f"<fieldOfView_mm><x>{fovx:g}</x><y>{fovy:g}</y><z>{fz:g}</z></fieldOfView_mm></{tag}>"
        )

    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        f'<ismrmrdHeader xmlns="{ISMRMRD_NS}">'
        "<experimentalConditions><H1resonanceFrequency_Hz>127000000</H1resonanceFrequency_Hz>"
        "</experimentalConditions>"
        "<encoding>"
        + space("encodedSpace", h, w, fx, fy)
        + space("reconSpace", rh, rw, rfx, rfy)
        + "<encodingLimits>"
        f"<kspace_encoding_step_1><minimum>0</minimum><maximum>{maximum}</maximum><center>{center}</center>"
        "</kspace_encoding_step_1>"
        "<kspace_encoding_step_2><minimum>0</minimum><maximum>0</maximum><center>0</center>"
        "</kspace_encoding_step_2>"
        "</encodingLimits><trajectory>cartesian</trajectory></encoding>"
        "</ismrmrdHeader>\n"
    )


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(node: ET.Element | None, *names: str) -> ET.Element | None:
    for name in names:
        if node is None:
            return None
        node = next((c for c in node if _local(c.tag) == name), None)
    return node


def _int(node: ET.Element | None) -> int | None:
    if node is None or node.text is None:
        return None
    return int(float(node.text.strip()))


def _triple(node: ET.Element | None, cast=int) -> tuple | None:
    if node is None:
        return None
    vals = [_child(node, a) for a in ("x", "y", "z")]
    if any(v is None or v.text is None for v in vals[:2]):
        return None
    return tuple(cast(float(v.text.strip())) for v in vals if v is not None and v.text is not None)


def parse_ismrmrd_header(xml: str | bytes, where: str | Path = "ismrmrd_header") -> dict[str, Any]:
    """Parse the fields mrlearn uses from an ISMRMRD XML header (namespace-agnostic; first ``encoding``).

    Returns ``encoding_size`` (x, y, z), ``recon_size`` (x, y, z), ``encoding_fov_mm``, ``recon_fov_mm`` (or None
    where absent) and ``enc_limits_center``/``enc_limits_max``/``enc_limits_min`` of kspace_encoding_step_1.
    """
    if isinstance(xml, bytes):
        xml = xml.decode("utf-8", errors="replace")
    try:
        root = ET.fromstring(str(xml).strip())
    except ET.ParseError as exc:
        raise input_error(where, f"ismrmrd_header is not valid XML ({exc})", "fix or delete the header dataset") from None
    enc = _child(root, "encoding")
    lims = _child(enc, "encodingLimits", "kspace_encoding_step_1")
    try:
        out = {
            "encoding_size": _triple(_child(enc, "encodedSpace", "matrixSize")),
            "recon_size": _triple(_child(enc, "reconSpace", "matrixSize")),
            "encoding_fov_mm": _triple(_child(enc, "encodedSpace", "fieldOfView_mm"), float),
            "recon_fov_mm": _triple(_child(enc, "reconSpace", "fieldOfView_mm"), float),
            "enc_limits_center": _int(_child(lims, "center")),
            "enc_limits_max": _int(_child(lims, "maximum")),
            "enc_limits_min": _int(_child(lims, "minimum")),
        }
    except (ValueError, OverflowError) as exc:
        raise input_error(where, f"ismrmrd_header has a non-numeric size or limit ({exc})", "fix the header") from None
    return out


def padding_from_limits(width: int, center: int | None, maximum: int | None) -> tuple[int, int] | None:
    """fastMRI: ``left = W // 2 - center``, ``right = left + maximum + 1``; None when absent or inconsistent."""
    if center is None or maximum is None:
        return None
    left = width // 2 - center
    right = left + maximum + 1
    if not (0 <= left < right <= width):
        return None
    return (int(left), int(right))
