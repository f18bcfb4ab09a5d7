"""Writing evaluation plots: atomically, byte-stable, and with their numbers as text.

A PNG's title and legend are pixels; the same strings are also stored in the
file's text chunks (``Title``, ``Description``), so a script or a test can read
the numbers a user sees on the plot without OCR.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any


def plot_text(fig: Any) -> dict[str, str]:
    """The title and the legend entries of ``fig``'s axes, one per line."""
    titles: list[str] = []
    labels: list[str] = []
    for ax in fig.axes:
        if ax.get_title():
            titles.append(ax.get_title())
        legend = ax.get_legend()
        if legend is not None:
            labels.extend(text.get_text() for text in legend.get_texts())
    return {"Title": "\n".join(titles), "Description": "\n".join(labels)}


def read_plot_text(path: str | os.PathLike[str]) -> dict[str, str]:
    """The text chunks :func:`save_png_atomic` wrote (``Title``, ``Description``)."""
    from PIL import Image, PngImagePlugin

    with Image.open(path) as image:
        if not isinstance(image, PngImagePlugin.PngImageFile):
            raise ValueError(f"{path}: not a PNG but {image.format}")
        return {key: str(value) for key, value in image.text.items()}


def save_png_atomic(fig: Any, target: Path) -> None:
    """Save ``fig`` as PNG via a temp file in the same folder + ``os.replace``.

    Readers never see a partial file, and the temp file is removed on failure.
    The version-stamped "Software" chunk is dropped so that the same
    evaluation gives the same bytes.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            fig.savefig(handle, format="png", metadata={"Software": None, **plot_text(fig)})
        os.chmod(tmp_name, 0o644)  # mkstemp creates 0600
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
