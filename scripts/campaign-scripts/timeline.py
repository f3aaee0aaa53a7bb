#!/usr/bin/env python3
"""Draws a fault campaign's timeline: acknowledged commits per second of each
kind of write, with every fault as a shaded span (injection to heal) and a
marker labelled with its number, coloured by kind.

    timeline.py REPORT.json OUT.png

REPORT.json is what `cargo test --test campaign` writes (report.json in the
directory it prints). Needs matplotlib, imported only here; without it the
script says so and exits 3.
"""

import json
import sys


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        import matplotlib
    except ImportError:
        print("timeline.py: matplotlib is not installed (apt-get install python3-matplotlib)",
              file=sys.stderr)
        return 3
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(argv[1]) as f:
        doc = json.load(f)
    throughput = doc["throughput_per_s"]
    faults = doc["faults"]
    kinds = sorted({f["kind"] for f in faults})
    palette = plt.get_cmap("tab20")
    colour = {k: palette(i % 20) for i, k in enumerate(kinds)}

    fig, (ax, big) = plt.subplots(2, 1, figsize=(16, 7), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1]})
    for name, style in (("insert", "-"), ("transfer", "-")):
        series = throughput.get(name, [])
        ax.plot([t + 0.5 for t in range(len(series))], series, style, linewidth=0.8, label=f"{name}s / s")
    series = throughput.get("big_transaction", [])
    big.bar(range(len(series)), series, width=1.0, align="edge", color="grey", label="4 MB transactions / s")
    top = max([1] + throughput.get("insert", []) + throughput.get("transfer", []))
    seen = set()
    for f in faults:
        c = colour[f["kind"]]
        for a in (ax, big):
            a.axvspan(f["start_s"], max(f["end_s"], f["start_s"] + 0.2), color=c, alpha=0.25,
                      linewidth=0)
        label = f["kind"] if f["kind"] not in seen else None
        seen.add(f["kind"])
        ax.plot([f["start_s"]], [top * 1.04], marker="v", color=c, markersize=7, label=label,
                linestyle="none")
        if len(faults) <= 60:
            ax.annotate(str(f["n"]), (f["start_s"], top * 1.07), fontsize=6, ha="center")
    ax.set_ylim(0, top * 1.12)
    ax.set_ylabel("acknowledged commits / s")
    big.set_ylabel("4 MB tx / s")
    big.set_xlabel("seconds since the workload started")
    ttw = doc["time_to_writable_ms"]
    ax.set_title(
        f"fault campaign, seed {doc['seed']:#x} ({doc['mode']}): {doc['faults_injected']} faults, "
        f"{len(doc['violations']) + doc['read_your_writes']['stale']} violations; "
        f"time to a writable primary p50 {ttw['p50']} ms, p99 {ttw['p99']} ms")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7)
    big.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7)
    fig.tight_layout()
    fig.savefig(argv[2], dpi=100)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
