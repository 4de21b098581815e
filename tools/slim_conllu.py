#!/usr/bin/env python3
"""Write a reduced but still valid CoNLL-U file (standard library only).

Kept: the ``# sent_id`` and ``# text`` comments, every token line (multiword
ranges ``3-4`` and empty nodes ``8.1`` included) with ID, FORM, LEMMA, UPOS,
XPOS, HEAD and DEPREL. Blanked to ``_``: FEATS, DEPS and MISC. Dropped: all
other comments (``# newdoc``, ``# newpar``, ...).

The tagger needs only FORM and the tags; the other kept columns make the file
usable for parsing experiments while the blanked ones are most of the bytes.

Usage (from the repository root; regenerates the bundled UD English EWT)::

    for s in train dev test; do
        python3 tools/slim_conllu.py \\
            /path/to/UD_English-EWT/en_ewt-ud-$s.conllu \\
            data/ud-english-ewt/en_ewt-ud-$s.conllu
    done

Output is deterministic: LF line ends, one blank line after each sentence.
"""

import sys

KEEP_COMMENTS = ("# sent_id ", "# sent_id=", "# text ", "# text=")
BLANK_COLUMNS = (5, 8, 9)  # FEATS, DEPS, MISC (0-based)


def slim(lines, source):
    """Yield the output lines (without line ends) for the input lines."""
    # True once a line of the current sentence has been written, so that a block
    # of dropped comments alone does not leave a stray blank line.
    in_sentence = False
    for number, line in enumerate(lines, start=1):
        line = line.rstrip("\r\n")
        if not line.strip():
            if in_sentence:
                yield ""
            in_sentence = False
            continue
        if line.startswith("#"):
            if line.startswith(KEEP_COMMENTS):
                in_sentence = True
                yield line
            continue
        in_sentence = True
        fields = line.split("\t")
        if len(fields) != 10:
            sys.exit(f"{source}:{number}: {len(fields)} tab-separated fields, expected 10")
        for c in BLANK_COLUMNS:
            fields[c] = "_"
        yield "\t".join(fields)
    # A file that does not end in a blank line still ends its last sentence.
    if in_sentence:
        yield ""


def main(argv):
    if len(argv) != 3:
        sys.exit(f"usage: {argv[0]} INPUT.conllu OUTPUT.conllu")
    src, dst = argv[1], argv[2]
    with open(src, encoding="utf-8", newline="") as f:
        out = [line + "\n" for line in slim(f, src)]
    with open(dst, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(out)


if __name__ == "__main__":
    main(sys.argv)
