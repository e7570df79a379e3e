"""Study instructions (Markdown) on the annotator's page: links only to http(s) and mailto,
whatever way the URL is spelt or written (raw HTML included), and no images."""
import html
from html.parser import HTMLParser

import pytest
from django.urls import reverse

from tests.factories import open_pairwise

pytestmark = pytest.mark.django_db

HOSTILE = [
    "[plain](javascript:alert(1))",
    "[data](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "[mixed case](JaVaScRiPt:alert(1))",
    "[entity](java&#x73;cript:alert(1))",
    "[spaced](  javascript:alert(1))",
    "[angled](<javascript:alert(1)>)",
    "[ref][evil]",
    '<a href="javascript:alert(1)">raw html</a>',
    "![tracker](http://evil.example/pixel.png)",
    "[evil]: javascript:alert(1)",
]
GOOD = "Read [docs](https://example.org/guide?a=1&b=2) or write to [us](mailto:team@example.org)."


class _Instructions(HTMLParser):
    """The tags (with attributes) of the rendered instructions: in the instructions region,
    before the list of keys the page adds."""

    def __init__(self):
        super().__init__()
        self.inside, self.tags = False, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if "instructions-body" in classes or "keys" in classes:
            self.inside = "instructions-body" in classes
        elif self.inside:
            self.tags.append((tag, attrs))


def instructions_tags(client, annotator, text: str) -> list[tuple[str, dict]]:
    study = open_pairwise(members=[annotator])
    study.instructions = text
    study.save(update_fields=["instructions"])
    client.force_login(annotator)
    response = client.get(reverse("annotate-study", args=[study.public_id]))
    assert response.status_code == 200
    parser = _Instructions()
    parser.feed(response.content.decode())
    return parser.tags


def test_instructions_render_no_script_or_data_link_and_no_image(client, annotator):
    tags = instructions_tags(client, annotator, "\n\n".join([*HOSTILE, GOOD]))
    urls = [html.unescape(value) for _, attrs in tags for name, value in attrs.items()
            if name in ("href", "src") and value]
    assert urls == ["https://example.org/guide?a=1&b=2", "mailto:team@example.org"]
    assert [tag for tag, _ in tags if tag == "img"] == []
    assert {attrs["rel"] for tag, attrs in tags if tag == "a"} == {"noopener noreferrer nofollow"}


def test_markdown_still_formats_the_instructions(client, annotator):
    tags = instructions_tags(client, annotator, "# Task\n\nJudge the **count**.\n\n- one\n- two\n\n> a quote")
    assert [tag for tag, _ in tags] == ["h1", "p", "strong", "ul", "li", "li", "blockquote", "p"]
