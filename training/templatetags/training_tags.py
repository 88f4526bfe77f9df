from typing import Any

from django import template

from annotate.models import kind_label as _kind_label

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
