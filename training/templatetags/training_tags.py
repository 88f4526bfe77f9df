from typing import Any

from django import template

from annotate.models import kind_label as _kind_label
from annotate.templatetags.annotate_tags import highlight_hits

register = template.Library()


@register.filter
def prompt_text(prompt: Any) -> str:
    """A prompt as one readable text: a string as is, messages as "role: content" lines."""
    if isinstance(prompt, list):
        return "\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" for m in prompt)
    return "" if prompt is None else str(prompt)


@register.filter
def seconds(value: float | None) -> str:
    """A duration a person reads at a glance: 42 s, 3 min 5 s."""
    if value is None:
        return "–"
    value = int(round(value))
    if value < 60:
        return f"{value} s"
    minutes, rest = divmod(value, 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


@register.filter
def percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f} %"


@register.filter
def kind_label(kind: str) -> str:
    """ "heldout" reads "held-out" (annotate.models.kind_label)."""
    return _kind_label(kind)


register.filter("highlight_hits", highlight_hits)  # the case page's too (annotate_tags)


@register.filter
def signed(value: Any) -> str:
    """A margin or drift with its sign: +4.21, −0.03."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "–"
    return f"{value:+.2f}".replace("-", "−")
