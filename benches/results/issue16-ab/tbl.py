import json, sys, glob, statistics, os
d = sys.argv[1]
rows = {}
for name in ("base", "new"):
    runs = []
    for f in sorted(glob.glob(os.path.join(d, f"{name}-*.json"))):
        j = json.load(open(f))
        r = j if "fanout_completion_us_p50" in j else j.get("report", j)
        runs.append(r)
    rows[name] = runs
keys = ["fanout_completion_us_p50", "fanout_completion_us_p99", "latency_us_p50", "server_cpu_per_delivery_ns", "server_rss_per_conn_bytes", "lost"]
for k in keys:
    line = [k]
    for name in ("base", "new"):
        vals = [r.get(k) for r in rows[name]]
        line.append(f"{name}: {vals} median {statistics.median([v for v in vals if v is not None]) if vals else None}")
    print(" | ".join(line))
# per-round ratios new/base
for k in ["fanout_completion_us_p50", "server_cpu_per_delivery_ns"]:
    ratios = [round(n[k] / b[k], 3) for b, n in zip(rows["base"], rows["new"])]
    print(k, "ratios new/base per round", ratios)
