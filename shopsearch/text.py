"""Text that cannot be stored or encoded, recognised the same way at every entrance.

Python turns bytes that were not UTF-8 into lone surrogates (``surrogateescape`` on argv and
file names), and JSON may spell one out (``"\\ud800"``). Tokenizers, SQLite and UTF-8 writers
all refuse them, far from where they came in; the CLI and the event reader check here first.
"""

from __future__ import annotations

__all__ = ["is_utf8"]


def is_utf8(text: str) -> bool:
    """False for text holding lone surrogates."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
