from django import template
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
