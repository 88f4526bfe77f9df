from django import template
from django.utils.safestring import SafeString, mark_safe

from annotate.rendering import render_markdown

register = template.Library()


@register.filter(name="markdown")
def markdown_filter(text: str) -> SafeString:
    """`{{ response.text|markdown }}`: rendered and sanitised (see annotate.rendering)."""
    return mark_safe(render_markdown(text))  # sanitised by nh3 in render_markdown
