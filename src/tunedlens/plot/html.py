"""Writing plotly figures as HTML pages: a ``<title>`` each, and one copy of plotly.js per folder.

plotly.js is ~4.8 MB; inlining it into every page made a 12-token figure 5 MB. The modes
(``--plotly``) are:

- ``directory`` (the default, works offline): the pages load ``plotly-<version>.min.js`` from
  their own folder, written there once. The version is in the name so that a page is never
  handed a different plotly.js than it was made with, and a file of that name is never replaced.
- ``inline``: each page carries its own copy (one file to mail around).
- ``cdn``: pages load plotly.js from the plotly CDN (small, but needs the network to open).
"""

from __future__ import annotations

import html
import os
from pathlib import Path

from tunedlens.errors import InputError, require
from tunedlens.outputs import OutputError, atomic_write

PLOTLY_MODES: tuple[str, ...] = ("directory", "inline", "cdn")
"""How a page gets plotly.js (``--plotly``); the first is the default."""
DEFAULT_PLOTLY = PLOTLY_MODES[0]
BUNDLE_PATTERN = "plotly-*.min.js"
"""The name of the shared copy of plotly.js (a glob: the version is in the name)."""
PLOTLY_HELP = (
    "How HTML pages get plotly.js: 'directory' (one copy of plotly-<version>.min.js beside "
    "them; offline), 'inline' (a 4.8 MB copy in every page) or 'cdn' (loaded from the "
    "network)."
)


def check_plotly_mode(mode: str, what: str = "--plotly") -> str:
    """``mode`` if it is one of :data:`PLOTLY_MODES`, else one :class:`InputError` line."""
    if mode not in PLOTLY_MODES:
        raise InputError(f"unknown {what} {mode!r}; choose one of {', '.join(PLOTLY_MODES)}")
    return mode


def bundle_name() -> str:
    """The file name of the shared plotly.js for the installed plotly: ``plotly-2.35.2.min.js``."""
    offline = require("plotly.offline", "plot", pip_name="plotly")
    return f"plotly-{offline.get_plotlyjs_version()}.min.js"


def _ensure_bundle(folder: Path) -> Path:
    """``folder/plotly-<version>.min.js``, written unless an identical copy is there."""
    offline = require("plotly.offline", "plot", pip_name="plotly")
    target = folder / bundle_name()
    data = offline.get_plotlyjs().encode("utf-8")
    if target.is_symlink() or target.exists():
        if target.is_file() and not target.is_symlink() and target.read_bytes() == data:
            return target
        raise OutputError(
            f"{target} exists and is not this plotly.js; move it away, or pass --plotly inline "
            "or --plotly cdn"
        )
    atomic_write(target, lambda handle: handle.write(data))
    return target


def write_html(
    figure, path: str | os.PathLike, *, title: str, plotly: str = DEFAULT_PLOTLY
) -> list[Path]:
    """Write ``figure`` as a full page with ``<title>``; returns the files written.

    The list is the page, then the shared plotly.js in ``directory`` mode (whether it was
    written now or an identical copy was already there).
    """
    check_plotly_mode(plotly)
    path = Path(path)
    include = {"directory": False, "inline": True, "cdn": "cdn"}[plotly]
    page = figure.to_html(include_plotlyjs=include, full_html=True)
    written = [path]
    if plotly == "directory":
        bundle = _ensure_bundle(path.parent)
        written.append(bundle)
        # include_plotlyjs="directory" would name the file plotly.min.js; ours carries the version.
        page = page.replace("<body>", f'<body>\n    <script src="{bundle.name}"></script>', 1)
    page = page.replace("<head>", f"<head><title>{html.escape(title, quote=False)}</title>", 1)
    atomic_write(path, lambda handle: handle.write(page.encode("utf-8")))
    return written


__all__ = [
    "BUNDLE_PATTERN",
    "DEFAULT_PLOTLY",
    "PLOTLY_HELP",
    "PLOTLY_MODES",
    "bundle_name",
    "check_plotly_mode",
    "write_html",
]
