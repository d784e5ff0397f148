#!/usr/bin/env python3
"""Caps a fuzz corpus to the inputs that cover the most code, for the regression test to replay.

Usage: cap_corpus.py <target> [files_max] [--apply]      (run from tests/fuzz/, after a build)

`cargo fuzz cmin` keeps every input that adds one edge, which leaves thousands here (sonic-rs
and httparse have many length-dependent paths). This script asks libFuzzer for each input's
edges (`-merge=1 -merge_control_file`), then picks greedily the input adding the most edges
not yet covered, up to `files_max` (default 300). Without `--apply` it only prints what it
would keep; with it, corpus/<target>/ holds exactly those files afterwards. Inputs whose name
is not a sha1 (hand-written seeds, inputs that found bugs) are always kept.
"""
import os, re, shutil, subprocess, sys, tempfile

def main():
    args = [a for a in sys.argv[1:] if a != "--apply"]
    if not args:
        sys.exit(__doc__)
    target, files_max = args[0], int(args[1]) if len(args) > 1 else 300
    corpus = os.path.join("corpus", target)
    binary = os.path.join("target", "x86_64-unknown-linux-gnu", "release", target)
    with tempfile.TemporaryDirectory() as scratch:
        control = os.path.join(scratch, "control")
        merged = os.path.join(scratch, "merged")
        os.mkdir(merged)
        subprocess.run([binary, "-merge=1", "-use_counters=0", f"-merge_control_file={control}",
                        merged, corpus], check=True, capture_output=True)
        lines = open(control).read().split("\n")
    paths = lines[2:2 + int(lines[0])]
    edges = {}
    for line in lines[2 + len(paths):]:
        fields = line.split()
        if fields[:1] == ["COV"]:
            edges[paths[int(fields[1])]] = set(fields[2:])
    keep = {p for p in paths if not re.fullmatch(r"[0-9a-f]{40}", os.path.basename(p))}
    covered = set().union(*(edges.get(p, set()) for p in keep))
    while len(keep) < files_max:
        gain, best = max((len(e - covered), p) for p, e in edges.items() if p not in keep)
        if gain == 0:
            break
        keep.add(best)
        covered |= edges[best]
    every = set().union(*edges.values())
    print(f"{target}: keep {len(keep)} of {len(paths)} files, {len(covered)} of {len(every)} edges")
    if "--apply" in sys.argv:
        for path in paths:
            if path not in keep:
                os.remove(path)

main()
