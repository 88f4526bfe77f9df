from typing import Any

from django import template

from annotate.models import kind_label as _kind_label
from rounds.winrate import WinRate

register = template.Library()


@register.filter
def winrate(value: WinRate | None) -> str:
    """'62% (48–74%), 21 judgments': the rate, its 95% interval and how much it rests on."""
    if value is None:
        return "–"
    judgments = f"{value.total} judgment{'' if value.total == 1 else 's'}"
    return f"{value.rate:.0%} ({value.low:.0%}–{value.high:.0%}), {judgments}"


@register.filter
def prompt_plain(prompt: Any) -> str:
    """A prompt as one line: the text, or the messages as "role: content"."""
    if isinstance(prompt, list):
        return " / ".join(f"{m.get('role')}: {m.get('content')}" for m in prompt)
    return str(prompt)


@register.filter
def kind_label(kind: str) -> str:
    """ "heldout" reads "held-out" (annotate.models.kind_label)."""
    return _kind_label(kind)
