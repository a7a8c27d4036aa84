"""Markdown tables and PNG plots from bench_gemm.py result JSONs.

  python bench/report.py bench/results/*.json [--outdir bench/results]

Per JSON <stem>.json: <stem>.md, <stem>_baselines_<set>.png, <stem>_speedup_<set>.png (when lowbit
ran) and <stem>_heatmap.png (when several bit-width pairs ran). Plus summary.md over all inputs.
"""
import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

MAX_LABELS = 8  # lowbit contenders per speedup plot (the best by geomean vs best_int8)


def fmt(v, nd=1):
    return "-" if v is None else f"{v:.{nd}f}"


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]


def machine(r):
    fp = r["fingerprint"]
    isa = " ".join(k for k, v in fp.get("isa", {}).items() if v)
    return (f"{fp.get('cpu_model')}, {fp.get('cpu_count')} cores (affinity {fp.get('affinity')}), ISA: {isa}; "
            f"torch {fp.get('torch')}, onnxruntime {fp.get('onnxruntime')}, numpy {fp.get('numpy')}; "
            f"commit {str(fp.get('git_commit'))[:12]}{' (dirty)' if fp.get('git_dirty') else ''}; "
            f"{fp.get('compiler')}; {fp.get('time_utc')}")


def lowbit_labels(rows):
    return sorted({x for s in rows for x in s["ratios"]})


def baseline_groups(shape):
    """GOPS per engine family (best of its linear/conv forms)."""
    groups = {}
    for name, g in shape["gops"].items():
        if name.startswith("lowbit:"):
            continue
        fam = name.replace("torch_", "").rsplit("_", 1)[0] if not name.startswith("ort_mnb") else "ort_mnb2"
        groups[fam] = max(groups.get(fam, 0), g)
    return groups


def lookup_share(gops, macs, ceiling, threads):
    """Byte lookups/s as a percentage of the measured per-core ceiling x threads."""
    if not (gops and macs and ceiling):
        return "-"
    return f"{100 * gops * 1e9 / 2 / macs / (ceiling * threads):.0f}%"


def write_md(r, stem, outdir):
    out = [f"# lowbit GEMM benchmark: {', '.join(r['config']['sets'])}, {r['threads']} thread(s)", "",
           f"Machine: {machine(r)}", "",
           f"Statistic: {r['config']['statistic']}; {r['config']['rounds']} rounds"
           + (" (--quick: smoke test, not for quoting)" if r["config"].get("quick") else ""), "",
           "What is timed:", ""] + [f"- `{k}`: {v}" for k, v in r["timed"].items()]
    out += ["", f"Ratio references: qnnpack = {r['ratio_refs']['qnnpack']}; best_int8 = {r['ratio_refs']['best_int8']}.", ""]
    if not r["lowbit"]["available"]:
        out += [f"lowbit was not benchmarked: {r['lowbit']['error']}", ""]
    for set_name in r["config"]["sets"]:
        rows = [s for s in r["shapes"] if s["set"] == set_name]
        if not rows:
            continue
        names = sorted({x for s in rows for x in s["gops"] if not x.startswith("lowbit:")})
        out += [f"## {set_name}", "", "### Baselines, GOPS", ""]
        out += table(["layer", "count", "M", "N", "K"] + [n.replace("torch_", "") for n in names] + ["best_int8"],
                     [[s["name"], s["count"], s["M"], s["N"], s["K"]] + [fmt(s["gops"].get(n)) for n in names]
                      + [s["best_int8"]["name"] if s["best_int8"] else "-"] for s in rows])
        labels = lowbit_labels(rows)
        if labels:
            rates = r["lowbit"].get("lookup_rates") or {}
            ceiling = max(rates.values()) if rates else None
            out += ["", "### lowbit, GOPS and speedups", ""]
            if ceiling:
                out += [f"`lookup %`: byte lookups per second the kernel performed (GOPS / 2 / MACs per lookup) "
                        f"as a share of this core's measured ceiling, {ceiling / 1e9:.0f} G lookups/s "
                        f"(tight vpshufb loops, `lowbit._core.lookup_rates`; x threads).", ""]
            out += table(["layer", "contender", "kernel ran", "GOPS", "x qnnpack", "x best_int8", "lookup %"],
                         [[s["name"], f"`{x}`", s["lowbit"][x]["kernel_ran"], fmt(s["gops"][x]),
                           fmt(s["ratios"][x]["vs_qnnpack"], 2), fmt(s["ratios"][x]["vs_best_int8"], 2),
                           lookup_share(s["gops"][x], s["lowbit"][x].get("macs_per_lookup"), ceiling, r["threads"])]
                          for s in rows for x in labels if x in s["ratios"]])
        gm = r["geomean"].get(set_name, {})
        out += ["", f"### Geometric means over {len(rows)} layers (weighted = by layer count)", ""]
        out += table(["contender", "GOPS", "x qnnpack", "x best_int8", "x qnnpack (w)", "x best_int8 (w)"],
                     [[f"`{x}`", fmt(e["gops"]), fmt(e.get("vs_qnnpack"), 2), fmt(e.get("vs_best_int8"), 2),
                       fmt(e.get("vs_qnnpack_weighted"), 2), fmt(e.get("vs_best_int8_weighted"), 2)]
                      for x, e in sorted(gm.items(), key=lambda kv: -kv[1]["gops"])])
        out.append("")
    errors = {}
    for s in r["shapes"]:
        for name, msg in s["errors"].items():
            errors.setdefault((name, msg), []).append(s["name"])
    if errors:
        out += ["## Errors", ""] + [f"- `{n}` on {len(ls)} layer(s) ({', '.join(ls[:3])}{'...' if len(ls) > 3 else ''}): {m}"
                                    for (n, m), ls in errors.items()]
    (outdir / f"{stem}.md").write_text("\n".join(out) + "\n")


def grouped_bars(ax, layers, series, ylabel, hline=None):
    width = 0.8 / max(1, len(series))
    for i, (name, vals) in enumerate(series.items()):
        ax.bar([j + i * width - 0.4 + width / 2 for j in range(len(layers))],
               [v or 0 for v in vals], width, label=name)
    if hline:
        ax.axhline(hline, color="k", lw=0.8, ls="--")
    ax.set_xticks(range(len(layers)), layers, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=6, ncol=2)


def write_plots(r, stem, outdir):
    tag = f"{r['threads']} thread(s)"
    for set_name in r["config"]["sets"]:
        rows = [s for s in r["shapes"] if s["set"] == set_name]
        if not rows:
            continue
        layers = [s["name"] for s in rows]
        fams = sorted({f for s in rows for f in baseline_groups(s)})
        fig, ax = plt.subplots(figsize=(max(6, len(rows) * 0.7), 4))
        grouped_bars(ax, layers, {f: [baseline_groups(s).get(f) for s in rows] for f in fams}, "GOPS")
        ax.set_title(f"{set_name}: baselines, {tag}")
        fig.tight_layout()
        fig.savefig(outdir / f"{stem}_baselines_{set_name}.png", dpi=120)
        plt.close(fig)
        labels = lowbit_labels(rows)
        if not labels:
            continue
        gm = r["geomean"].get(set_name, {})
        labels = sorted(labels, key=lambda x: -(gm.get(x, {}).get("vs_best_int8") or 0))[:MAX_LABELS]
        fig, axes = plt.subplots(2, 1, figsize=(max(7, len(rows) * 0.8), 7), sharex=True)
        for ax, key, ref in zip(axes, ("vs_qnnpack", "vs_best_int8"), ("qnnpack", "best int8")):
            grouped_bars(ax, layers, {x: [s["ratios"].get(x, {}).get(key) for s in rows] for x in labels},
                         f"speedup vs {ref}", hline=1.0)
        axes[0].set_title(f"{set_name}: lowbit speedup per layer, {tag}")
        fig.tight_layout()
        fig.savefig(outdir / f"{stem}_speedup_{set_name}.png", dpi=120)
        plt.close(fig)
    write_heatmap(r, stem, outdir)


def write_heatmap(r, stem, outdir):
    """bw x ba -> geomean speedup over best int8 (best lowbit strategy per cell, all layers)."""
    cells = {}
    for s in r["shapes"]:
        for x, info in s["lowbit"].items():
            if x in s["ratios"] and s["ratios"][x]["vs_best_int8"]:
                key = (info["codebook"], info["w_bits"], info["a_bits"], info["strategy"])
                cells.setdefault(key, []).append(s["ratios"][x]["vs_best_int8"])
    if len({(w, a) for _, w, a, _ in cells}) < 2:
        return
    books = sorted({c for c, *_ in cells}, reverse=True)  # uniform first
    fig, axes = plt.subplots(1, len(books), figsize=(4.5 * len(books), 4.6), squeeze=False)
    for ax, book in zip(axes[0], books):
        grid = [[None] * 4 for _ in range(4)]
        for (c, w, a, _), vals in cells.items():
            g = common.geomean(vals)
            if c == book and 1 <= w <= 4 and 1 <= a <= 4 and (grid[w - 1][a - 1] or 0) < g:
                grid[w - 1][a - 1] = g
        im = ax.imshow([[v if v is not None else float("nan") for v in row] for row in grid],
                       origin="lower", cmap="RdYlGn", vmin=0, vmax=2)
        for w in range(4):
            for a in range(4):
                ax.text(a, w, fmt(grid[w][a], 2), ha="center", va="center", fontsize=8)
        ax.set_xticks(range(4), [1, 2, 3, 4])
        ax.set_yticks(range(4), [1, 2, 3, 4])
        ax.set_xlabel("activation bits")
        ax.set_ylabel("weight bits")
        ax.set_title(f"{book} codebook")
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(f"geomean speedup over best int8\n(best strategy per cell, {r['threads']} thread(s))", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    fig.savefig(outdir / f"{stem}_heatmap.png", dpi=120)
    plt.close(fig)


def write_summary(results, outdir):
    out = ["# lowbit benchmark summary", ""]
    body = []
    for stem, r in results:
        for set_name, gm in r["geomean"].items():
            for x, e in gm.items():
                if x.startswith("lowbit:") or x in ("torch_qnnpack_linear", "torch_x86_conv", "ort_int8_conv",
                                                    "ort_int8_matmul", "ort_mnb2_acc4", "fp32_matmul"):
                    body.append([stem, r["threads"], set_name, f"`{x}`", fmt(e["gops"]),
                                 fmt(e.get("vs_qnnpack"), 2), fmt(e.get("vs_best_int8"), 2)])
    out += table(["result", "threads", "set", "contender", "geomean GOPS", "x qnnpack", "x best_int8"], body)
    if results:
        out += ["", f"Machine: {machine(results[0][1])}"]
    (outdir / "summary.md").write_text("\n".join(out) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", type=Path)
    ap.add_argument("--outdir", type=Path, help="default: next to each JSON")
    args = ap.parse_args(argv)
    done = []
    for path in args.results:
        r = json.loads(path.read_text())
        outdir = args.outdir or path.parent
        outdir.mkdir(parents=True, exist_ok=True)
        write_md(r, path.stem, outdir)
        write_plots(r, path.stem, outdir)
        done.append((path.stem, r))
        print(f"report: {outdir / path.stem}.md")
    write_summary(done, args.outdir or args.results[0].parent)


if __name__ == "__main__":
    main()
