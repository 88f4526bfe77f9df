"""Markdown for responses, prompts and guidelines, rendered so that nothing in it can run.

Two layers, because either alone has failed somewhere before: markdown-it-py with raw HTML
switched off turns `<script>` in a response into visible text, and nh3 (Rust's ammonia) then
keeps only an allow-list of tags and attributes, whatever the renderer let through.
Images are not rendered (an image URL in a model's answer would call a third-party server
from the annotator's browser); their Markdown stays visible as text.
"""

import re

import nh3
from markdown_it import MarkdownIt

_markdown = (
    # breaks: model answers use single newlines as line breaks, and annotators must see them.
    MarkdownIt("commonmark", {"html": False, "breaks": True, "linkify": False})
    .enable(["table", "strikethrough"])
    .disable("image")
)

_TAGS = {
    "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "em", "s", "del",
    "code", "pre", "blockquote", "ul", "ol", "li", "a", "table", "thead", "tbody", "tr",
    "th", "td",
}  # fmt: skip
_ATTRIBUTES = {"a": {"href", "title"}, "code": {"class"}, "ol": {"start"}}
_LANGUAGE_CLASS = re.compile(r"language-[A-Za-z0-9_+#.-]{1,40}")


def _keep_attribute(tag: str, name: str, value: str) -> str | None:
    # The one class kept is the fence's language, so a stylesheet or highlighter can use it.
    if name == "class":
        return value if tag == "code" and _LANGUAGE_CLASS.fullmatch(value) else None
    return value


def render_markdown(text: str) -> str:
    """Markdown to HTML that is safe to put in a page as is."""
    html = _markdown.render(text or "")
    return nh3.clean(
        html,
        tags=_TAGS,
        attributes=_ATTRIBUTES,
        attribute_filter=_keep_attribute,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
    )
