"""Untrusted text (store titles and sources, checkpoint meta and config fields) made safe for st.markdown."""

from __future__ import annotations

import re

# Every ASCII punctuation character may be backslash-escaped in CommonMark; these are the ones that start
# Markdown, HTML, LaTeX ($), emoji shortcodes and Streamlit's :color[...] directives (:).
_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:&])")


def md_escape(text: object) -> str:
    """`text` as literal Markdown: links, emphasis, HTML tags and directives in it show as typed, never render."""
    return _SPECIAL.sub(r"\\\1", str(text)).replace("\n", " ")
