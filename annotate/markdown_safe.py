"""Researchers' Markdown (study instructions) as HTML that is safe to put in an annotator's page.

Raw HTML in the text is shown as text, never parsed; the rendered HTML then goes through nh3
(ammonia), which keeps a few tags and only http(s) and mailto links, whatever Markdown made of
the URL (``JaVaScRiPt:``, ``java&#x73;cript:``, ``data:``). No images: an external image would
tell its host each annotator's address and when they work, and instructions need none."""
from __future__ import annotations

import markdown
import nh3
from django.utils.safestring import SafeString, mark_safe

TAGS = {"p", "em", "strong", "ul", "ol", "li", "a", "code", "pre", "blockquote", "br", "hr",
        "h1", "h2", "h3", "h4", "h5", "h6"}
ATTRIBUTES = {"a": {"href", "title"}}
URL_SCHEMES = {"http", "https", "mailto"}
LINK_REL = "noopener noreferrer nofollow"


def render_markdown(text: str) -> SafeString:
    md = markdown.Markdown()  # one per call: a Markdown instance keeps state between conversions
    md.preprocessors.deregister("html_block")
    md.inlinePatterns.deregister("html")
    html = nh3.clean(md.convert(text), tags=TAGS, attributes=ATTRIBUTES, url_schemes=URL_SCHEMES,
                     url_relative="deny", link_rel=LINK_REL, clean_content_tags={"script", "style"})
    return mark_safe(html)  # noqa: S308 - nh3 has just sanitised it
