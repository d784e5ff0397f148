#!/usr/bin/env python3
"""Writes the hostile JSON corpus that tests/hostile_json.rs replays, into this folder.

Usage: make.py           write every file (the corpus is what this writes; rerun after an edit)
       make.py --check   write nothing; exit 1 naming each file that differs from the recipe

Each file is one JSON value, or what was meant to be one, that the replay puts in every place
of every parser the server exposes. `arrays-N` is N nested arrays; `objects-N` is N nested
`{"a":..}` around a 1; `mixed-N` alternates the two.
"""
import os, sys

def arrays(n):
    return "[" * n + "]" * n

def objects(n):
    return '{"a":' * n + "1" + "}" * n

def mixed(n):
    opens = "".join("[" if level % 2 == 0 else '{"a":' for level in range(n))
    closes = "".join("]" if level % 2 == 0 else "}" for level in reversed(range(n)))
    return opens + "1" + closes

def long_string():
    escapes = ["\\n", "\\t", '\\"', "\\\\", "\\/", "\\b", "\\f", "\\r", "\\u00e9", "\\ud83d\\ude00"]
    parts, size, at = [], 0, 0
    while size < 60_000:
        for part in ("corecast carries this string as it came, byte for byte, ", escapes[at % 10]):
            parts.append(part)
            size += len(part)
        at += 1
    return '"' + "".join(parts) + '"'

FILES = {
    # Depth: at, just over and far over json_depth_max = 128 once a file sits one level inside
    # a document (a command's or a body's `{`), and on its own.
    "arrays-127.json": arrays(127),
    "arrays-128.json": arrays(128),
    "arrays-129.json": arrays(129),
    "objects-127.json": objects(127),
    "objects-128.json": objects(128),
    "objects-129.json": objects(129),
    "mixed-128.json": mixed(128),
    # The deepest a 64 KiB WebSocket frame carries: 32,000 levels in 64,000 bytes, closed and
    # unclosed, and objects as deep as 64 KiB holds.
    "arrays-32000.json": arrays(32_000),
    "unclosed-arrays-32000.json": "[" * 32_000,
    "objects-10900.json": objects(10_900),
    # Brackets that are string contents open nothing.
    "brackets-in-string.json": '"' + arrays(30_000) + '"',
    "escaped-quote-then-brackets.json": '"\\"' + "[" * 1_000 + '"',
    # Long strings and many keys.
    "long-string.json": long_string(),
    "many-keys.json": "{" + ",".join(f'"k{i}":{i}' for i in range(5_000)) + "}",
    "duplicate-keys.json": '{"a":1,"a":2}',
    # Numbers past what any number type holds.
    "number-1e400.json": "1e400",
    "number-minus-1e400.json": "-1e400",
    "number-1e-400.json": "1e-400",
    "number-300-digits.json": "9" * 300,
    "number-minus-zero.json": "-0",
    "number-u64-max-plus-one.json": "18446744073709551616",
    "number-i64-min-minus-one.json": "-9223372036854775809",
    "number-leading-zero.json": "0123",
    # Surrogates: alone, reversed, before a non-surrogate, and one valid pair.
    "surrogate-lone-high.json": '"\\ud800"',
    "surrogate-lone-low.json": '"\\udc00"',
    "surrogate-high-then-letter.json": '"\\ud800\\u0041"',
    "surrogate-reversed-pair.json": '"\\udc00\\ud800"',
    "surrogate-valid-pair.json": '"\\ud83d\\ude00"',
    # Escapes that are not JSON's.
    "escape-x.json": '"\\x41"',
    "escape-u-short.json": '"\\u12"',
    "escape-u-not-hex.json": '"\\u00zz"',
    "escape-u-swallows-quote.json": '"\\u0"x"',
    "escape-trailing-backslash.json": '"abc\\',
    # Bytes a string may not hold raw, and nothing at all.
    "control-char-in-string.json": '"a\tb"',
    "nul-in-string.json": '"a\x00b"',
    "invalid-utf8-in-string.json": b'"a\xffb"',
    "empty.json": "",
}

def main():
    args = sys.argv[1:]
    if args not in ([], ["--check"]):
        sys.exit(__doc__)
    here = os.path.dirname(os.path.abspath(__file__))
    differ = []
    for name, text in FILES.items():
        path = os.path.join(here, name)
        data = text if isinstance(text, bytes) else text.encode("utf-8")
        if args:
            if not os.path.exists(path) or open(path, "rb").read() != data:
                differ.append(name)
        else:
            with open(path, "wb") as f:
                f.write(data)
    if differ:
        print("differ from make.py:", " ".join(differ))
        sys.exit(1)

main()
