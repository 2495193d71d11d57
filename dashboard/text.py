"""Text that came from outside (review notes, reviewer names, DICOM strings, file names) shown
as what it is: Streamlit renders Markdown, so a note reading ``**NO BLEED** ![x](http://…)``
would otherwise print as the app's own bold verdict and fetch an image from any address."""

from __future__ import annotations

import re

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|~$:])")


def plain(text: object) -> str:
    """``text`` with every Markdown/HTML control character escaped, line breaks as spaces.

    >>> plain("**NO BLEED** ![b](http://x/y.png)")
    '\\\\*\\\\*NO BLEED\\\\*\\\\* \\\\!\\\\[b\\\\]\\\\(http\\\\://x/y\\\\.png\\\\)'
    """
    return _MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))
