"""Reads an Autobahn|Testsuite fuzzingclient report and fails unless every case passed.

Usage: python check.py REPORTS/servers/index.json [AGENT]

Prints the count of each behavior (OK, NON-STRICT, INFORMATIONAL, UNIMPLEMENTED, FAILED), the
cases that were not OK and a closing "autobahn: N passed, N failed" line, and exits 1 if any case is FAILED or NON-STRICT, or if the report
holds no case at all. The behaviorClose verdict counts too: a case whose close handshake was
wrong is reported under that verdict. Runs on Python 2.7 (the suite's own) and Python 3.
"""
from __future__ import print_function

import json
import sys

ORDER = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]
RANK = dict((name, at) for at, name in enumerate(ORDER))


def case_key(case_id):
    return [int(part) for part in case_id.split(".")]


def verdict(result):
    """The worse of a case's behavior and its close behavior."""
    worst = result.get("behavior", "FAILED")
    close = result.get("behaviorClose", "OK")
    if RANK.get(close, RANK["FAILED"]) > RANK.get(worst, RANK["FAILED"]) and close != "INFORMATIONAL":
        worst = close
    return worst if worst in RANK else "FAILED"


def main(argv):
    if len(argv) < 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    with open(argv[1]) as report:
        index = json.load(report)
    if len(argv) > 2:
        agents = {argv[2]: index.get(argv[2], {})}
    else:
        agents = index
    counts = dict((name, 0) for name in ORDER)
    bad = []
    for agent, cases in sorted(agents.items()):
        for case_id in sorted(cases, key=case_key):
            name = verdict(cases[case_id])
            counts[name] += 1
            if name != "OK":
                bad.append((agent, case_id, name, cases[case_id]))
    total = sum(counts.values())
    print("| " + " | ".join(ORDER) + " | total |")
    print("|" + "---|" * (len(ORDER) + 1))
    print("| " + " | ".join(str(counts[name]) for name in ORDER) + " | %d |" % total)
    for agent, case_id, name, result in bad:
        print("%s %s: %s (behavior %s, close %s, %s ms)" % (
            agent, case_id, name, result.get("behavior"), result.get("behaviorClose"),
            result.get("duration")))
    if total == 0:
        print("autobahn: the report holds no case", file=sys.stderr)
        return 1
    failing = counts["FAILED"] + counts["NON-STRICT"]
    # The plain closing line CI logs are read for: cases that passed, cases that did not.
    print("autobahn: %d passed, %d failed" % (total - failing, failing))
    if failing:
        print("autobahn: %d case(s) FAILED or NON-STRICT" % failing, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
