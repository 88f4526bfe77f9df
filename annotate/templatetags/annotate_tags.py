from typing import Any

from django import template
from django.utils.html import escape, format_html
from django.utils.safestring import SafeString, mark_safe

from annotate.rendering import render_markdown

register = template.Library()


@register.filter(name="markdown")
def markdown_filter(text: str) -> SafeString:
    """`{{ response.text|markdown }}`: rendered and sanitised (see annotate.rendering)."""
    return mark_safe(render_markdown(text))  # sanitised by nh3 in render_markdown


@register.filter
def prompt_excerpt(prompt: str | list, length: int = 120) -> str:
    """One line for lists: a plain prompt, or the last user message of a conversation."""
    if isinstance(prompt, list):
        users = [
            m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user"
        ]
        text = users[-1] if users else ""
    else:
        text = str(prompt or "")
    text = " ".join(text.split())
    return text if len(text) <= length else text[: length - 1] + "…"


@register.filter
def highlight_hits(text: Any, verdict: Any) -> SafeString:
    """The answer with the phrases that decided its verdict marked: a found include green, a
    found exclude red (spans from report.json, in the answer's own characters)."""
    text = "" if text is None else str(text)
    hits = (verdict.get("hits") if isinstance(verdict, dict) else None) or []
    marks: list[tuple[int, int, str, str]] = []
    for hit in hits:
        if not hit.get("found"):
            continue
        for span in hit.get("spans") or []:
            if (
                isinstance(span, list | tuple)
                and len(span) == 2
                and all(isinstance(v, int) for v in span)
                and 0 <= span[0] < span[1] <= len(text)
            ):
                marks.append((span[0], span[1], hit.get("kind", ""), str(hit.get("item", ""))))
    marks.sort()
    pieces, at = [], 0
    for start, end, kind, item in marks:
        if start < at:  # overlapping matches: the first one marks the text
            continue
        pieces.append(escape(text[at:start]))
        css = "hit-exclude" if kind == "exclude" else "hit-include"
        label = "must not contain" if kind == "exclude" else "must contain"
        pieces.append(
            format_html(
                '<mark class="{}" title="{} {}">{}</mark>', css, label, item, text[start:end]
            )
        )
        at = end
    pieces.append(escape(text[at:]))
    return mark_safe("".join(str(piece) for piece in pieces))  # every piece escaped above
