#!/usr/bin/env python3
"""Draws the figures of one lf-bench-scaling run (its --out JSON) as one PNG of four panels.

    bench/scaling/plot.py build-scale/bench/scaling/scaling.json docs/scaling.png

Panels: 1. publish time against adapter size, with memcpy and a line of slope 1 (time
proportional to size) for comparison; 2. acquire + release against reader processes: ns per
operation (left axis) and each process's throughput (right axis); 3. flip latency against
adapters and against event subscribers, with the subscribers' event latency; 4. the daemon's
memory against adapters and against open readers. Log-log axes where the counts span decades.
Needs matplotlib (client/python/requirements-dev.txt); draws off-screen (Agg).
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

# Plain numbers (0.05, 1, 200), not powers of ten.
PLAIN = FuncFormatter(lambda v, _: f"{v:g}")


def counts_axis(ax, ticks):
    """A log2 x axis labelled with the measured counts as plain numbers (1, 4, 16, ...)."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks)
    ax.xaxis.set_major_formatter(PLAIN)
    ax.xaxis.set_minor_formatter(NullFormatter())


def plain_log_y(ax):
    """Plain numbers at 1, 2 and 5 of each decade on a log y axis."""
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(PLAIN)
    ax.yaxis.set_minor_formatter(NullFormatter())


def publish_panel(ax, run):
    rows = run["publish"]
    mib = [r["mib"] for r in rows]
    ms = [r["median_us"] / 1e3 for r in rows]
    ax.loglog(mib, ms, "o-", label="publish (median)")
    ax.loglog(mib, [r["memcpy_median_us"] / 1e3 for r in rows], "s--", label="memcpy, same bytes")
    # Time proportional to size, through the largest size's point: the line publish should
    # follow once the copy outweighs the round trips.
    ax.loglog(mib, [ms[-1] * m / mib[-1] for m in mib], ":", color="grey",
              label="proportional to size")
    for m, t, r in zip(mib, ms, rows):
        ax.annotate(f"{r['gib_per_s']:.1f} GiB/s", (m, t), textcoords="offset points",
                    xytext=(4, -12), fontsize=7)
    ax.set_xticks(mib)
    ax.xaxis.set_major_formatter(PLAIN)
    ax.xaxis.set_minor_formatter(NullFormatter())
    plain_log_y(ax)
    ax.set_xlabel("adapter size (MiB)")
    ax.set_ylabel("ms")
    ax.set_title("1. publish: begin + copy + commit + visible")
    ax.legend(fontsize=7)


def acquire_panel(ax, run):
    rows = run["acquire"]
    n = [r["readers"] for r in rows]
    ax.plot(n, [r["cpu_ns_median"] for r in rows], "o-", label="CPU ns per op (median)")
    ax.plot(n, [r["cpu_ns_p99"] for r in rows], "v--", label="CPU ns per op (p99)")
    counts_axis(ax, n)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("reader processes at once")
    ax.set_ylabel("ns per acquire + release")
    right = ax.twinx()
    right.plot(n, [r["per_process_mops"] for r in rows], "s:", color="tab:red",
               label="per process (Mops/s)")
    right.set_yscale("log")
    plain_log_y(right)
    right.set_ylabel("Mops/s per process", color="tab:red")
    lines = ax.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="lower left")
    ax.set_title("2. acquire + release in a tight loop")


def flip_panel(ax, run):
    a = run["flip_adapters"]
    # The row of 0 subscribers has no place on a log axis: a horizontal line instead.
    none = [r for r in run["flip_subscribers"] if r["subscribers"] == 0]
    s = [r for r in run["flip_subscribers"] if r["subscribers"] > 0]
    ax.loglog([r["adapters"] for r in a], [r["median_us"] for r in a], "o-",
              label="flip, against adapters")
    ax.loglog([r["subscribers"] for r in s], [r["median_us"] for r in s], "s-",
              label="flip, against subscribers")
    if none:
        ax.axhline(none[0]["median_us"], color="tab:orange", linestyle=(0, (1, 3)),
                   label="flip, no subscriber")
    ax.loglog([r["subscribers"] for r in s], [r["event_median_us"] for r in s], "^--",
              label="event received (median)")
    ax.loglog([r["subscribers"] for r in s], [r["event_last_median_us"] for r in s], "v:",
              label="event, last subscriber")
    counts_axis(ax, sorted({r["adapters"] for r in a} | {r["subscribers"] for r in s}))
    plain_log_y(ax)
    ax.set_xlabel("adapters, or event subscribers")
    ax.set_ylabel("us from the commit request (median)")
    ax.set_title("3. flip of a 4 KiB adapter")
    ax.legend(fontsize=7)


def memory_panel(ax, run):
    for key, what, marker in (("memory_adapters", "adapters", "o"), ("memory_readers", "readers", "s")):
        rows = [r for r in run[key] if r[what] > 0]  # a log axis has no 0; the table has it
        n = [r[what] for r in rows]
        ax.plot(n, [r["rss_kib"] / 1024 for r in rows], marker + "-", label=f"RSS, {what}")
        ax.plot(n, [r["anon_kib"] / 1024 for r in rows], marker + "--", label=f"anonymous, {what}")
    ticks = {r[w] for k, w in (("memory_adapters", "adapters"), ("memory_readers", "readers"))
             for r in run[k] if r[w] > 0}
    counts_axis(ax, sorted(ticks))
    ax.set_ylim(bottom=0)
    ax.set_xlabel("adapters, or open readers")
    ax.set_ylabel("loraflipd MiB")
    ax.set_title("4. daemon memory")
    ax.legend(fontsize=7)


def main(argv):
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        run = json.load(f)
    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    publish_panel(axes[0][0], run)
    acquire_panel(axes[0][1], run)
    flip_panel(axes[1][0], run)
    memory_panel(axes[1][1], run)
    quick = " (--quick)" if run.get("quick") else ""
    fig.suptitle(f"lf-bench-scaling{quick}: {run['machine']}", fontsize=11)
    fig.tight_layout()
    fig.savefig(argv[2], dpi=100)
    print(f"wrote {argv[2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
