"""Regenerates `kjv.txt.xz` from Debian's `bible-kjv` package (no network once the package is installed).

    apt-get install bible-kjv
    python train/data/corpus/make_kjv.py

Output format: one verse per line, verse references stripped, one blank line between chapters, so that a
chapter is one document (see `train.data.text_corpus`). The `bible` program prints the whole text with
`-f` (references on, no pretty-printing, one verse per line); a line reads `1Sm12:3 Behold, here I am...`.
"""

import lzma
import os
import re
import subprocess
import sys

_REFERENCE = re.compile(r"^(\S+?)(\d+):(\d+) (.*)$")
_OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kjv.txt.xz")


def kjv_lines():
    """Yields the corpus lines: verses, with an empty line wherever the chapter changes."""
    raw = subprocess.run(
        ["bible", "-f", "Gen1:1-Rev22:21"], check=True, capture_output=True, text=True
    ).stdout
    chapter = None
    for line in raw.splitlines():
        match = _REFERENCE.match(line)
        if match is None:
            raise ValueError(f"unexpected line from `bible`: {line!r}")
        book, number, _, text = match.groups()
        if chapter is not None and (book, number) != chapter:
            yield ""
        chapter = (book, number)
        yield text.strip()


def main():
    text = "\n".join(kjv_lines()) + "\n"
    # Fixed preset and no timestamp in the .xz container, so regenerating gives identical bytes.
    with lzma.open(_OUTPUT, "wt", encoding="utf-8", preset=9 | lzma.PRESET_EXTREME) as f:
        f.write(text)
    print(f"wrote {_OUTPUT}: {len(text.encode())} bytes of text, {os.path.getsize(_OUTPUT)} compressed")


if __name__ == "__main__":
    sys.exit(main())
