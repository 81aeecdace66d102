"""A self-contained HTML contact sheet of search results (``clipindex search --html FILE``).

One file, no external resources: every thumbnail is embedded as a ``data:image/jpeg;base64`` URI, made
with Pillow (decoded as ingest decodes: EXIF orientation applied, non-regular files and decompression
bombs refused; JPEGs DCT-draft decoded, so camera photos cost little), at most ``thumb_size`` pixels
on a side. Each card shows the thumbnail (a link to the original file), rank, score, path and pixel
size; the header shows the query (text, or the query image), the model and the store.

Paths and queries are hostile input: every piece of text is HTML-escaped (``html.escape``, quotes too),
non-printable characters are shown as ``\\x``/``\\u`` escapes, links are percent-encoded ``file://``
URLs, and a Content-Security-Policy forbids scripts and any resource but the embedded images.

The layout has fixed sizes (272 px cards on a grid, a 120 px header), so a screenshot's thumbnails
are where :func:`card_box` says.
"""

from __future__ import annotations

import base64
import html
import io
import os
import tempfile
import time
import urllib.parse
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from clipindex.display import printable
from clipindex.errors import ImageError, OutputError
from clipindex.ops.results import SearchResult

__all__ = [
    "THUMB_SIZE",
    "Thumbnail",
    "card_box",
    "render_contact_sheet",
    "thumbnail",
    "write_contact_sheet",
    "write_document",
]

#: longest side of a thumbnail, pixels
THUMB_SIZE = 256
#: layout constants (CSS pixels): page padding, gap between cards, card padding, caption height, header height
PAGE_PAD = 16
GAP = 16
CARD_PAD = 8
CAPTION_H = 64
HEADER_H = 120
JPEG_QUALITY = 85


@dataclass(frozen=True)
class Thumbnail:
    """A JPEG thumbnail as a ``data:`` URI, or why there is none."""

    data_uri: str | None
    width: int = 0
    height: int = 0
    error: str | None = None


def thumbnail(path: str | os.PathLike[str], size: int = THUMB_SIZE) -> Thumbnail:
    """Decode ``path`` and shrink it to fit ``size x size`` (aspect kept); never raises for a bad file."""
    from clipindex.images.config import PreprocessConfig
    from clipindex.images.decode import load_image

    try:
        # draft: libjpeg decodes at 1/2..1/8 scale, keeping the short side >= 2 * size, then resizes to `size`
        config = PreprocessConfig(shortest_edge=size, crop_height=size, crop_width=size)
        image = load_image(path, draft=True, config=config)
    except ImageError as exc:
        return Thumbnail(None, error=exc.reason)
    except OSError as exc:  # pragma: no cover - load_image turns these into ImageError
        return Thumbnail(None, error=exc.strerror or str(exc))
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return Thumbnail(f"data:image/jpeg;base64,{encoded}", image.width, image.height)


def card_box(index: int, columns: int, thumb_size: int = THUMB_SIZE) -> tuple[int, int, int, int]:
    """``(left, top, right, bottom)`` CSS pixels of the thumbnail area of card ``index`` (0-based).

    ``columns`` is how many cards fit a row: ``(viewport_width - 2 * PAGE_PAD + GAP) // (card + GAP)``.
    """
    card_w = thumb_size + 2 * CARD_PAD
    card_h = thumb_size + 2 * CARD_PAD + CAPTION_H
    row, col = divmod(index, columns)
    left = PAGE_PAD + col * (card_w + GAP) + CARD_PAD
    top = HEADER_H + PAGE_PAD + row * (card_h + GAP) + CARD_PAD
    return left, top, left + thumb_size, top + thumb_size


def columns_for(viewport_width: int, thumb_size: int = THUMB_SIZE) -> int:
    """How many cards a row holds in a viewport ``viewport_width`` CSS pixels wide (at least 1)."""
    card_w = thumb_size + 2 * CARD_PAD
    return max(1, (viewport_width - 2 * PAGE_PAD + GAP) // (card_w + GAP))


def _text(value: str) -> str:
    return html.escape(printable(value), quote=True)


def _file_url(path: str) -> str:
    return "file://" + urllib.parse.quote(path, safe="/")


_STYLE = """
* { box-sizing: border-box; }
html, body { margin: 0; padding: 0; }
body { background: #eef0f3; color: #1d2330; font: 14px/1.35 system-ui, -apple-system, "Segoe UI", sans-serif; }
header { height: %(header)dpx; overflow: hidden; padding: 14px %(pad)dpx; background: #1d2330; color: #f4f6fa;
         display: flex; align-items: center; gap: 16px; }
header .query-image { width: 92px; height: 92px; flex: none; display: flex; align-items: center;
                      justify-content: center; background: #2c3446; border-radius: 4px; overflow: hidden; }
header .query-image img { max-width: 92px; max-height: 92px; display: block; }
header h1 { margin: 0 0 4px; font-size: 22px; font-weight: 600; white-space: nowrap; overflow: hidden;
            text-overflow: ellipsis; }
header .meta { font-size: 12px; color: #b9c1d0; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
header .text { min-width: 0; }
main { padding: %(pad)dpx; display: grid; grid-template-columns: repeat(auto-fill, %(card_w)dpx); gap: %(gap)dpx; }
.card { width: %(card_w)dpx; height: %(card_h)dpx; margin: 0; padding: %(card_pad)dpx; background: #fff;
        border-radius: 6px; box-shadow: 0 1px 3px rgba(0, 0, 0, .15); overflow: hidden; }
.thumb { width: %(thumb)dpx; height: %(thumb)dpx; display: flex; align-items: center; justify-content: center;
         background: #dfe3ea; overflow: hidden; }
.thumb img { max-width: %(thumb)dpx; max-height: %(thumb)dpx; display: block; }
.thumb .missing { padding: 12px; color: #8a1f1f; font-size: 12px; text-align: center; word-break: break-word; }
.caption { height: %(caption)dpx; padding-top: 6px; overflow: hidden; }
.caption .score { font-weight: 600; }
.caption .rank { color: #6b7385; margin-right: 6px; }
.caption .size { float: right; color: #6b7385; font-size: 12px; }
.caption .path { font-size: 12px; color: #3b4356; word-break: break-all; overflow: hidden;
                 display: -webkit-box; -webkit-line-clamp: 2; -webkit-box-orient: vertical; }
.empty { padding: %(pad)dpx; font-size: 16px; }
section.group { padding: 0 %(pad)dpx %(pad)dpx; }
section.group h2 { margin: 0; padding: %(pad)dpx 0 0; font-size: 15px; font-weight: 600; }
section.group main { padding: %(pad)dpx 0 0; }
.card.best { outline: 3px solid #2f8f4e; }
"""


def render_contact_sheet(
    results: Sequence[SearchResult],
    *,
    query: str,
    query_image: str | os.PathLike[str] | None = None,
    model: str | None = None,
    store: str | None = None,
    thumb_size: int = THUMB_SIZE,
    groups: Sequence[tuple[str, Sequence[SearchResult]]] | None = None,
    best: frozenset[str] = frozenset(),
) -> str:
    """The contact sheet as one HTML document (str). ``query`` is shown as given (a text query, or a label
    for an image query); ``query_image`` adds that image's thumbnail to the header.

    With ``groups`` (``(title, results)`` pairs; ``results`` is then ignored), each group is a titled row of cards
    side by side, and the cards of the paths in ``best`` are outlined."""
    if groups is not None:
        results = [r for _title, rows in groups for r in rows]
    paths = [r.path for r in results]
    with ThreadPoolExecutor(max_workers=min(8, max(1, len(paths)))) as pool:
        thumbs = list(pool.map(lambda p: thumbnail(p, thumb_size), paths))
    query_thumb = thumbnail(query_image, 92) if query_image is not None else None
    card_w = thumb_size + 2 * CARD_PAD
    style = _STYLE % {
        "header": HEADER_H,
        "pad": PAGE_PAD,
        "gap": GAP,
        "card_w": card_w,
        "card_h": thumb_size + 2 * CARD_PAD + CAPTION_H,
        "card_pad": CARD_PAD,
        "thumb": thumb_size,
        "caption": CAPTION_H,
    }
    if groups is not None:
        meta = [f"{len(groups)} group{'s' if len(groups) != 1 else ''} of {len(results)} files"]
    else:
        meta = [f"{len(results)} result{'s' if len(results) != 1 else ''}"]
    if model:
        meta.append(f"model {model}")
    if store:
        meta.append(store)
    meta.append(time.strftime("%Y-%m-%d %H:%M:%S %z"))
    out: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="generator" content="clipindex">',
        f"<title>clipindex: {_text(query)}</title>",
        f"<style>{style}</style>",
        "</head>",
        "<body>",
        "<header>",
    ]
    if query_thumb is not None:
        if query_thumb.data_uri is not None:
            out.append(f'<div class="query-image"><img src="{query_thumb.data_uri}" alt="query image"></div>')
        else:
            out.append('<div class="query-image"></div>')
    out += [
        '<div class="text">',
        f"<h1>{_text(query)}</h1>",
        f'<div class="meta">{_text(" · ".join(meta))}</div>',
        "</div>",
        "</header>",
    ]
    if not results:
        out.append('<div class="empty">No results.</div>')
    elif groups is not None:
        by_path = iter(thumbs)
        for title, rows in groups:
            out += ['<section class="group">', f"<h2>{_text(title)}</h2>", "<main>"]
            out += [_card(r, next(by_path), best=r.path in best) for r in rows]
            out += ["</main>", "</section>"]
    else:
        out.append("<main>")
        for result, thumb in zip(results, thumbs, strict=True):
            out.append(_card(result, thumb))
        out.append("</main>")
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


def _card(result: SearchResult, thumb: Thumbnail, *, best: bool = False) -> str:
    path = _text(result.path)
    if thumb.data_uri is not None:
        inner = (
            f'<a href="{html.escape(_file_url(result.path), quote=True)}">'
            f'<img src="{thumb.data_uri}" width="{thumb.width}" height="{thumb.height}" alt="{path}"></a>'
        )
    else:
        inner = f'<div class="missing">image unavailable: {_text(thumb.error or "unknown error")}</div>'
    size = f"{result.width}×{result.height}" if result.width and result.height else ""
    return (
        f'<figure class="card{" best" if best else ""}" data-rank="{result.rank}">'
        f'<div class="thumb">{inner}</div>'
        f'<figcaption class="caption"><span class="rank">#{result.rank}</span>'
        f'<span class="score">{result.score:.4f}</span><span class="size">{size}</span>'
        f'<div class="path" title="{path}">{path}</div></figcaption>'
        "</figure>"
    )


def write_contact_sheet(
    path: str | os.PathLike[str],
    results: Sequence[SearchResult],
    *,
    query: str,
    query_image: str | os.PathLike[str] | None = None,
    model: str | None = None,
    store: str | None = None,
    thumb_size: int = THUMB_SIZE,
) -> Path:
    """Render the contact sheet and write it to ``path`` (atomically: a complete file or none). Returns it."""
    document = render_contact_sheet(
        results, query=query, query_image=query_image, model=model, store=store, thumb_size=thumb_size
    )
    return write_document(path, document)


def write_document(path: str | os.PathLike[str], document: str) -> Path:
    """Write an HTML ``document`` to ``path`` atomically (a complete file or none); returns the path written.
    :class:`~clipindex.errors.OutputError` when it cannot be written."""
    target = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise OutputError(f"{target}: cannot write the contact sheet there ({exc.strerror or exc})") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(document)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"{target}: cannot write the contact sheet ({exc.strerror or exc})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
