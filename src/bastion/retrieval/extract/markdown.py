"""Markdown (CommonMark, with markdown-it-py): headings with their levels, paragraphs, and
lists, tables and code kept whole."""

from __future__ import annotations

from bastion.domain.retrieval import Block, ExtractedDocument
from bastion.retrieval.extract.detect import MARKDOWN
from bastion.retrieval.extract.html import parse_html
from bastion.retrieval.extract.text import SPACES


def parse_markdown(text: str) -> ExtractedDocument:
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").enable(["table", "strikethrough"]).parse(text)
    blocks: list[Block] = []
    lines: list[str] = []  # of the list, table or code block being collected
    lists: list[str] = []  # the marker of each open list: "-" or "1."
    row: list[str] = []
    prefix: str | None = None  # the marker of the list item whose first line is next
    title: str | None = None

    def line(text: str) -> None:
        nonlocal prefix
        indent = "  " * max(len(lists) - 1, 0)
        lines.append(indent + (prefix + " " if prefix else ("  " if lists else "")) + text)
        prefix = None

    for i, tok in enumerate(tokens):
        kind = tok.type
        if kind == "heading_open" and not lists:
            heading = _inline_text(tokens[i + 1])
            if heading:
                level = int(tok.tag[1])
                blocks.append(Block("heading", heading, level))
                if level == 1 and title is None:
                    title = heading
        elif kind == "inline" and tokens[i - 1].type in ("paragraph_open", "heading_open"):
            if tokens[i - 1].type == "heading_open" and not lists:
                continue  # taken above
            content = _inline_text(tok)
            if lists:
                line(content)
            elif content:
                blocks.append(Block("paragraph", content))
        elif kind in ("bullet_list_open", "ordered_list_open"):
            lists.append("-" if kind == "bullet_list_open" else ".")
        elif kind == "list_item_open":
            prefix = f"{tok.info}." if lists[-1] == "." else "-"
        elif kind in ("bullet_list_close", "ordered_list_close"):
            lists.pop()
            if not lists:
                blocks.append(Block("paragraph", "\n".join(lines)))
                lines = []
        elif kind in ("fence", "code_block"):
            code = [c.rstrip() for c in tok.content.rstrip("\n").split("\n")]
            if lists:
                for code_line in code:
                    line(code_line)
            elif any(code):
                blocks.append(Block("paragraph", "\n".join(code).strip("\n")))
        elif kind == "inline" and tokens[i - 1].type in ("th_open", "td_open"):
            row.append(_inline_text(tok))
        elif kind == "tr_close":
            if any(row):
                lines.append(" | ".join(row))
            row = []
        elif kind == "table_close" and not lists:
            if lines:
                blocks.append(Block("paragraph", "\n".join(lines)))
            lines = []
        elif kind == "html_block":
            blocks.extend(b for b in parse_html(tok.content).blocks if b.kind == "paragraph")
    return ExtractedDocument(title, tuple(b for b in blocks if b.text.strip()), MARKDOWN)


def _inline_text(token: object) -> str:
    """An inline token's text without markup: link text, image alt text, code as written."""
    parts: list[str] = []
    for child in getattr(token, "children", None) or ():
        if child.type in ("text", "code_inline"):
            parts.append(child.content)
        elif child.type == "softbreak":
            parts.append(" ")
        elif child.type == "hardbreak":
            parts.append("\n")
        elif child.type == "image":
            parts.append(_inline_text(child))
    return "\n".join(SPACES.sub(" ", p).strip() for p in "".join(parts).split("\n")).strip()

