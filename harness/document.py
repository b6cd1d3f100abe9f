"""A document built once as a list of blocks (headings, paragraphs, bullets, tables, images,
code) and rendered twice: to Markdown, with images as relative links, and to a self-contained
HTML page, with images embedded as data URIs and the style inline."""

from __future__ import annotations

import base64
import html
import re
from collections import Counter
from collections.abc import Sequence


def slug(text: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


class Doc:
    """A report as a list of blocks, rendered to Markdown (images as relative links) and to a
    self-contained HTML page (images as data URIs)."""

    def __init__(self) -> None:
        self.blocks: list[tuple] = []
        self._anchors: Counter = Counter()

    def heading(self, level: int, text: str) -> None:
        anchor = slug(text)
        self._anchors[anchor] += 1
        if self._anchors[anchor] > 1:  # as GitHub does: -1, -2, ... for repeated headings
            anchor = f"{anchor}-{self._anchors[anchor] - 1}"
        self.blocks.append(("heading", level, text, anchor))

    def para(self, text: str) -> None:
        self.blocks.append(("para", text))

    def bullets(self, items: Sequence[str | tuple[str, str]]) -> None:
        """Items are text, or (text, anchor) for a link to a heading."""
        self.blocks.append(("bullets", list(items)))

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[str]],
              right: Sequence[int] = ()) -> None:
        self.blocks.append(("table", list(headers), [list(r) for r in rows], set(right)))

    def image(self, file: str, alt: str) -> None:
        self.blocks.append(("image", file, alt))

    def code(self, lines: Sequence[str]) -> None:
        self.blocks.append(("code", list(lines)))

    def markdown(self) -> str:
        out = []
        for block in self.blocks:
            kind = block[0]
            if kind == "heading":
                out.append(f"{'#' * block[1]} {_md_text(block[2])}")
            elif kind == "para":
                out.append(_md_text(block[1]))
            elif kind == "bullets":
                out.append("\n".join(f"- [{_md_text(i[0])}](#{i[1]})" if isinstance(i, tuple)
                                     else f"- {_md_text(i)}" for i in block[1]))
            elif kind == "table":
                _, headers, rows, right = block
                rule = ["---:" if i in right else "---" for i in range(len(headers))]
                out.append("\n".join("| " + " | ".join(map(_md_cell, row)) + " |"
                                     for row in [headers, rule, *rows]))
            elif kind == "image":
                out.append(f"![{_md_text(block[2])}]({block[1]})")
            elif kind == "code":
                out.append("```bash\n" + "\n".join(block[1]) + "\n```")
        return "\n\n".join(out) + "\n"

    def html(self, images: dict[str, bytes]) -> str:
        title = next((b[2] for b in self.blocks if b[0] == "heading"), "Report")
        body = []
        for block in self.blocks:
            kind = block[0]
            if kind == "heading":
                body.append(f'<h{block[1]} id="{block[3]}">{_html_text(block[2])}</h{block[1]}>')
            elif kind == "para":
                body.append(f"<p>{_html_text(block[1])}</p>")
            elif kind == "bullets":
                body.append("<ul>" + "".join(
                    f'<li><a href="#{i[1]}">{_html_text(i[0])}</a></li>' if isinstance(i, tuple)
                    else f"<li>{_html_text(i)}</li>" for i in block[1]) + "</ul>")
            elif kind == "table":
                _, headers, rows, right = block
                body.append(f"<table><thead><tr>{_html_row(headers, 'th', right)}</tr></thead>"
                            "<tbody>" + "".join(f"<tr>{_html_row(r, 'td', right)}</tr>"
                                                for r in rows) + "</tbody></table>")
            elif kind == "image":
                data = base64.b64encode(images[block[1]]).decode("ascii")
                body.append(f'<figure><img src="data:image/png;base64,{data}" '
                            f'alt="{html.escape(block[2])}"><figcaption>'
                            f"{html.escape(block[1])}</figcaption></figure>")
            elif kind == "code":
                body.append("<pre><code>" + html.escape("\n".join(block[1])) + "</code></pre>")
        return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
                f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
                + "\n".join(body) + "\n</body>\n</html>\n")


CSS = """
body { font-family: system-ui, sans-serif; max-width: 1400px; margin: 2em auto; padding: 0 1em;
       color: #1a1a1a; line-height: 1.45; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: .85em; display: block;
        overflow-x: auto; }
th, td { border: 1px solid #d0d0d0; padding: .25em .55em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } .num { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; }
figcaption { font-size: .8em; color: #666; }
pre { background: #f6f6f6; padding: .8em; overflow-x: auto; font-size: .85em; }
code { font-family: ui-monospace, monospace; }
"""


def _html_row(row: Sequence[str], tag: str, right: set[int]) -> str:
    return "".join(f"<{tag}{' class=num' if i in right else ''}>{html.escape(str(cell))}</{tag}>"
                   for i, cell in enumerate(row))


def _md_text(text: str) -> str:
    return text.replace("\n", " ").replace("<", "&lt;")


def _md_cell(text: str) -> str:
    return _md_text(str(text)).replace("|", "\\|")


def _html_text(text: str) -> str:
    """Escaped text, with `code` spans (the only inline markup the report's prose uses)."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))
