"""Responses are shown as Markdown, and nothing inside a response can run in the page."""

from django.template import Context, Template

from annotate.rendering import render_markdown


def test_script_and_event_handlers_show_as_text():
    html = render_markdown("<script>alert(1)</script>\n\n<img src=x onerror=alert(1)>")
    assert "<script" not in html and "<img" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html


def test_fenced_code_keeps_its_language_class():
    html = render_markdown("```python\nprint('hi')\n```")
    assert '<pre><code class="language-python">' in html
    assert "print(&#39;hi&#39;)" in html or "print('hi')" in html


def test_a_language_that_tries_to_break_out_of_the_attribute_is_dropped():
    html = render_markdown('```py" onclick="alert(1)\nx\n```')
    assert "onclick" not in html
    assert "<pre><code>x" in html


def test_links_open_without_opener_and_javascript_urls_are_not_links():
    html = render_markdown("[docs](https://example.com) and [bad](javascript:alert(1))")
    assert '<a href="https://example.com" rel="noopener noreferrer nofollow">docs</a>' in html
    assert 'href="javascript' not in html


def test_images_are_not_loaded_from_a_response():
    html = render_markdown("![tracker](https://evil.example/pixel.png)")
    assert "<img" not in html


def test_single_newlines_are_line_breaks_and_tables_render():
    assert "one<br>" in render_markdown("one\ntwo")
    html = render_markdown("| a | b |\n|---|--:|\n| 1 | 2 |")
    assert "<table>" in html and "<td>2</td>" in html
    assert "style=" not in html  # inline styles would break the page's CSP


def test_template_filter_marks_the_result_safe():
    out = Template("{% load annotate_tags %}{{ text|markdown }}").render(
        Context({"text": "**bold** <b>raw</b>"})
    )
    assert "<strong>bold</strong>" in out
    assert "&lt;b&gt;raw&lt;/b&gt;" in out
