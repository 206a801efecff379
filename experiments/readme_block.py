"""The README's generated blocks: text between `<!-- NAME:start -->` and `<!-- NAME:end -->`
that a study script rewrites, so the README's results are the script's, never typed."""

from __future__ import annotations

import pathlib


def replace(path: pathlib.Path, name: str, body: str) -> None:
    """Rewrites the block `name` of `path` with `body`; raises if its markers are missing."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = path.read_text()
    if start not in text or end not in text:
        raise ValueError(f"{path}: the markers {start} / {end} are missing")
    head, rest = text.split(start, 1)
    path.write_text(head + start + "\n" + body.strip() + "\n" + end + rest.split(end, 1)[1])
