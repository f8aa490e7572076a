#!/usr/bin/env python3
"""Searches the output of the whole test suite for secrets.

`.ci/run` runs the suite with `TOWER_API_KEY_TEST_LOG=1 -- --nocapture`: every event of this crate
and of the database clients, at every level, and every reply a test's HTTP client got are then in
the output, next to the harness's own lines and every panic or error message. No key that any test
issued may appear there, nor its secret or the digest of it.

Every key this crate issues has one shape, `<prefix>_<env>_<12-character id>_<38 characters>`: 32
of secret and 6 of checksum, base62. A digest is 64 hex characters. So instead of collecting the
secrets each test made, this looks for what any of them would look like: a run of 32 or more
letters and digits, which the public parts of a key (prefix, environment, id) never form, nor do
test names, paths or the harness's hashes. A leak of any key, from any test, is caught. Opaque
(legacy) keys have no shape: those the tests store (`KeyRecord::opaque`) are read from the tests'
source and searched for by their text.

So that a silent suite cannot pass, the output must also show that it was logged: at least
MIN_EVENTS events naming a key id and MIN_REPLIES replies (100 each unless given).

Usage: scan_output.py [--min-events N] [--min-replies N] LOG...
       scan_output.py --self-test     (shows that a planted key is caught)
"""

import glob
import os
import re
import sys

MIN_EVENTS = 100
MIN_REPLIES = 100

SECRET_LIKE = re.compile(r"[0-9A-Za-z]{32,}")
KEY_LIKE = re.compile(r"[0-9A-Za-z]+_(?:live|test|dev)_[0-9A-Za-z]{12}_[0-9A-Za-z]+")


def opaque_keys():
    """The opaque keys the tests store: `KeyRecord::opaque("…"` or through a `let name = "…"`."""
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests")
    keys = set()
    for path in glob.glob(os.path.join(root, "**", "*.rs"), recursive=True):
        with open(path, encoding="utf-8") as source:
            text = source.read()
        keys.update(re.findall(r'KeyRecord::opaque\(\s*"([^"]+)"', text))
        for name in re.findall(r"KeyRecord::opaque\(\s*&?([a-z_][a-z0-9_]*)\s*,", text):
            keys.update(re.findall(rf'let {name}(?:: &str)? = "([^"]+)"', text))
    return sorted(keys)


def secret_like(line):
    """Every secret-like string in `line`."""
    return [m.group(0) for pattern in (KEY_LIKE, SECRET_LIKE) for m in pattern.finditer(line)]


def self_test():
    """The scan catches a key, a secret alone and a digest, and passes the public parts."""
    key = "mesh_live_3kTMd9Qx2bLp_" + "aB3" * 12 + "x7Qz"
    assert secret_like(f'api key accepted key_id="3kTMd9Qx2bLp" {key}'), "a whole key"
    assert secret_like("secret=" + key[23:55]), "the secret alone"
    assert secret_like("digest " + "0f" * 32), "a digest in hex"
    assert not secret_like('DEBUG tower_api_key: api key accepted key_id="3kTMd9Qx2bLp" outcome="ok"')
    assert not secret_like("Running tests/http.rs (target/debug/deps/http-9d2645e35de675d6)")
    print("self-test passed: planted secrets are caught, public parts are not")
    return 0


def main(paths, min_events=MIN_EVENTS, min_replies=MIN_REPLIES):
    events = replies = lines = 0
    found = []
    opaque = opaque_keys()
    if len(opaque) < 2:
        print(f"FAILED: expected the tests' opaque keys in their source, found {len(opaque)}")
        return 1
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as log:
            for number, line in enumerate(log, 1):
                lines += 1
                if "key_id=" in line:
                    events += 1
                if line.startswith("reply: Reply {"):
                    replies += 1
                found.extend((path, number, text) for text in secret_like(line))
                found.extend((path, number, key) for key in opaque if key in line)
    print(
        f"scanned {lines} lines for shaped keys and {len(opaque)} opaque keys: "
        f"{events} events naming a key id, {replies} replies"
    )
    if found:
        for path, number, text in found[:20]:
            # Only the first characters: the point is where, not to print it again.
            print(f"{path}:{number}: secret-like text {text[:8]}... ({len(text)} characters)")
        print(f"FAILED: {len(found)} secret-like strings in the suite's output")
        return 1
    if events < min_events or replies < min_replies:
        print(
            f"FAILED: expected at least {min_events} events and {min_replies} replies; "
            f"was the suite run with TOWER_API_KEY_TEST_LOG=1 and --nocapture?"
        )
        return 1
    print("no key, secret or digest in the suite's output")
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    if args == ["--self-test"]:
        sys.exit(self_test())
    minimums = {"--min-events": MIN_EVENTS, "--min-replies": MIN_REPLIES}
    while args and args[0] in minimums:
        minimums[args[0]] = int(args[1])
        args = args[2:]
    if not args:
        sys.exit(__doc__)
    sys.exit(main(args, minimums["--min-events"], minimums["--min-replies"]))
