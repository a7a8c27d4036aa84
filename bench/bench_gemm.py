"""Time lowbit against int8/2-bit/fp32 baselines on real network layers, interleaved, in one
process at one thread count (qnnpack fixes its thread count at first use: use run_all.py).

  python bench/bench_gemm.py --threads 1 --shapes resnet18 --out bench/results/r18_t1.json
  python bench/bench_gemm.py --threads 1 --shapes resnet18 --quick --out /tmp/smoke.json
"""
import argparse
import contextlib
import json
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import baselines  # noqa: E402
import common  # noqa: E402
import shapes  # noqa: E402

warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
warnings.filterwarnings("ignore", message=".*deprecated.*", category=UserWarning)


LOWBIT_API = ("pack_weights", "gemm", "use", "kernels", "last_kernel", "set_num_threads")


def import_lowbit():
    """Return (module, None) or (None, reason). Tries the installed package, then the source
    tree (python/ or src/); a module lacking the benchmark API counts as unavailable."""
    reason = None
    for sub in (None, "python", "src"):
        if sub is not None:
            path = common.REPO / sub
            if not (path / "lowbit").is_dir() or str(path) in sys.path:
                continue
            sys.path.insert(0, str(path))
            sys.modules.pop("lowbit", None)
        try:
            import lowbit
        except Exception as e:  # noqa: BLE001
            reason = f"{type(e).__name__}: {e}"
            continue
        missing = [a for a in LOWBIT_API if not hasattr(lowbit, a)]
        if not missing:
            return lowbit, None
        reason = f"lowbit at {getattr(lowbit, '__path__', '?')} lacks {missing}"
    return None, reason


def parse_pairs(args):
    """[(bw, ba, nonuniform)] from --bits WxA and --all-pairs."""
    if args.all_pairs:
        return [(w, a, nu) for w in range(1, 5) for a in range(1, 5) for nu in (False, True)]
    pairs = []
    for spec in args.bits or ["2x2"]:
        w, a = (int(x) for x in spec.lower().split("x"))
        pairs.append((w, a, False))
    return pairs


def nonuniform_codebook(bits, rng):
    """2^bits distinct ints in [-8, 7], sorted (a non-uniform codebook row)."""
    return np.sort(rng.choice(np.arange(-8, 8), size=1 << bits, replace=False)).astype(np.int8)


def use_kwargs(spec, registry_names):
    """'auto' -> None; 'key=value' -> lowbit.use(key=value) (e.g. isa=avx2, strategy=lutgemm);
    a registry name -> use(kernel=...); any other name -> use(strategy=...)."""
    if spec == "auto":
        return None
    if "=" in spec:
        key, _, val = spec.partition("=")
        return {key: val}
    return {"kernel": spec} if spec in registry_names else {"strategy": spec}


def default_strategies(registry, bw, ba, with_scalar):
    """'auto' + every available registry kernel for these bit widths (0/None in the registry =
    any width). Scalar twins are oracles, not contenders: only with --with-scalar."""
    fits = lambda have, want: have in (want, 0, None)  # noqa: E731
    return ["auto"] + [r["name"] for r in registry if r.get("available") and fits(r.get("w_bits"), bw)
                       and fits(r.get("a_bits"), ba) and (with_scalar or r.get("tier") != "scalar")]


def lowbit_contenders(lb, shape, pairs, requested, rng, with_scalar=False):
    """({label: (fn, ctx_factory)}, {label: info}, {label: error}) for one shape."""
    m, n, k = shape["M"], shape["N"], shape["K"]
    fns, info, errors = {}, {}, {}
    registry = lb.kernels()
    names = {r["name"] for r in registry}
    for bw, ba, nu in pairs:
        wcb = nonuniform_codebook(bw, rng) if nu else None
        acb = nonuniform_codebook(ba, rng) if nu else None
        tag = f"w{bw}a{ba}" + (":nu" if nu else "")
        try:
            w = rng.integers(0, 1 << bw, (n, k), dtype=np.uint8)
            a = rng.integers(0, 1 << ba, (m, k), dtype=np.uint8)
            packed = lb.pack_weights(w, bits=bw, codebook=wcb)
        except Exception as e:  # noqa: BLE001
            errors[f"lowbit:pack:{tag}"] = f"{type(e).__name__}: {e}"
            continue
        for strat in requested or default_strategies(registry, bw, ba, with_scalar):
            label = f"lowbit:{strat}:{tag}"
            fn = (lambda a=a, p=packed, ba=ba, acb=acb: lb.gemm(a, p, a_bits=ba, a_codebook=acb))
            kw = use_kwargs(strat, names)
            ctx = (lambda kw=kw: lb.use(**kw)) if kw else None
            try:
                with ctx() if ctx else contextlib.nullcontext():
                    fn()
                    ran = lb.last_kernel()
                    macs = macs_per_lookup(lb, bw, ba, wcb, acb)
            except Exception as e:  # noqa: BLE001 - e.g. a kernel that rejects a codebook
                errors[label] = f"{type(e).__name__}: {e}"
                continue
            fns[label] = (fn, ctx) if ctx else fn
            info[label] = {"strategy": strat, "w_bits": bw, "a_bits": ba,
                           "codebook": "nonuniform" if nu else "uniform", "kernel_ran": ran,
                           "macs_per_lookup": macs,
                           "w_codebook": None if wcb is None else wcb.tolist(),
                           "a_codebook": None if acb is None else acb.tolist()}
    return fns, info, errors


def macs_per_lookup(lb, bw, ba, wcb, acb):
    """Multiply-accumulates one byte lookup performs in the plan that just ran
    (1 for DeepGEMM's product LUT, gw for the group tables), None for kernels
    that do not look products up."""
    try:
        cb = lb.codebook
        plan = lb.ops._plan_for(bw, ba, cb.normalize(wcb, bw), cb.normalize(acb, ba))[0]
    except Exception:  # noqa: BLE001 - reporting only
        return None
    if plan.family == "lutgemm":
        return 1 if plan.table_kind == "i8" else 0.5  # int16 tables: two byte lookups per product
    if plan.family in ("grouplut", "grouplut6"):
        return plan.params[2]
    return None


def summarize(shape, timings):
    """GOPS per contender, qnnpack / best_int8 references, lowbit ratios."""
    m, n, k = shape["M"], shape["N"], shape["K"]
    g = {name: common.gops(m, n, k, t["median_s"]) for name, t in timings.items() if "median_s" in t}

    def best(names):
        cands = [(g[x], x) for x in names if x in g]
        return {"name": max(cands)[1], "gops": max(cands)[0]} if cands else None

    qnn = best([x for x in g if baselines.engine_of(x) == "qnnpack"])
    b8 = best([x for x in g if baselines.engine_of(x) in baselines.INT8_BEST_POOL])
    ratios = {x: {"vs_qnnpack": g[x] / qnn["gops"] if qnn else None,
                  "vs_best_int8": g[x] / b8["gops"] if b8 else None}
              for x in g if x.startswith("lowbit:")}
    return g, qnn, b8, ratios


def geomeans(rows):
    """{set: {label: {...}}} geomeans of lowbit ratios and of every contender's GOPS."""
    out = {}
    for s in sorted({r["set"] for r in rows} | {"all"}):
        sel = [r for r in rows if s in ("all", r["set"])]
        labels = sorted({x for r in sel for x in r["gops"]})
        out[s] = {}
        for x in labels:
            have = [r for r in sel if x in r["gops"]]
            cnt = [r["count"] for r in have]
            entry = {"gops": common.geomean([r["gops"][x] for r in have]), "n_shapes": len(have)}
            if x.startswith("lowbit:"):
                for key in ("vs_qnnpack", "vs_best_int8"):
                    vals = [r["ratios"][x][key] for r in have]
                    entry[key] = common.geomean(vals)
                    entry[key + "_weighted"] = common.geomean(vals, cnt)
            out[s][x] = entry
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--shapes", action="append", help="resnet18, vgg16, mobilenet_pw, gemm, all (repeatable)")
    ap.add_argument("--layers", help="comma list of substrings: keep only matching layer names")
    ap.add_argument("--bits", action="append", help="WxA, e.g. 2x2 (repeatable; default 2x2)")
    ap.add_argument("--all-pairs", action="store_true", help="every bw,ba in 1..4, uniform + non-uniform codebooks")
    ap.add_argument("--lowbit-kernels", help="comma list: 'auto' (lowbit's own choice), a registry kernel "
                    "name, a strategy/family name, or key=value for lowbit.use (e.g. isa=avx2); default: auto + "
                    "every available non-scalar registry kernel matching the bit widths")
    ap.add_argument("--with-scalar", action="store_true", help="also time scalar-tier kernels by default")
    ap.add_argument("--baselines", help="comma list of substrings of baseline names to keep (default: all)")
    ap.add_argument("--no-lowbit", action="store_true")
    ap.add_argument("--block-size", type=int, default=32, help="MatMulNBits block size (32 or 64)")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--min-time", type=float, default=0.02, help="seconds per timed batch")
    ap.add_argument("--quick", action="store_true", help="3 rounds of >=5 ms batches, for smoke tests")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="result JSON path (default: bench/results/gemm_<sets>_t<threads>.json)")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.min_time = 3, 0.005

    import torch
    torch.set_num_threads(args.threads)  # before any qnnpack use
    sets = shapes.canonical(args.shapes or ["resnet18"])
    todo = shapes.get(sets)
    if args.layers:
        todo = [s for s in todo if any(p in s["name"] for p in args.layers.split(","))]
    pairs = parse_pairs(args)
    requested = args.lowbit_kernels.split(",") if args.lowbit_kernels else None
    only = args.baselines.split(",") if args.baselines else None
    rng = np.random.default_rng(args.seed)

    lb, lb_err = (None, "disabled by --no-lowbit") if args.no_lowbit else import_lowbit()
    lb_meta = {"available": lb is not None, "error": lb_err}
    if lb is None:
        print(f"note: lowbit not benchmarked ({lb_err}); baseline columns only", flush=True)
    else:
        lb.set_num_threads(args.threads)
        lb_meta["kernels"] = [dict(r) for r in lb.kernels()]
        lb_meta["version"] = getattr(lb, "__version__", None)
        lb_meta["path"] = getattr(lb, "__file__", None)
        # this core's byte-lookup ceilings (tight vpshufb loops), to report LUT
        # kernels as a fraction of the machine's limit. The host is shared: a
        # busy neighbour can halve one sample, so the ceiling is re-measured
        # before every layer and the highest sample is kept.
        lb_meta["lookup_rates"] = lb._core.lookup_rates(0.3)

    rows = []
    for i, shape in enumerate(todo, 1):
        m, n, k = shape["M"], shape["N"], shape["K"]
        print(f"[{i}/{len(todo)}] {shape['set']}/{shape['name']} M={m} N={n} K={k} ...", end=" ", flush=True)
        if lb is not None:
            sample = lb._core.lookup_rates(0.05)
            lb_meta["lookup_rates"] = {x: max(v, sample[x]) for x, v in lb_meta["lookup_rates"].items()}
        fns, errors = baselines.build(shape, args.threads, args.block_size, only)
        info = {}
        if lb is not None:
            lfns, info, lerr = lowbit_contenders(lb, shape, pairs, requested, rng, args.with_scalar)
            fns.update(lfns)
            errors.update(lerr)
        timings = common.time_interleaved(fns, args.rounds, 1, args.min_time)
        errors.update({x: t["error"] for x, t in timings.items() if "error" in t})
        g, qnn, b8, ratios = summarize(shape, timings)
        rows.append({**shape, "gops": g, "qnnpack": qnn, "best_int8": b8, "ratios": ratios,
                     "lowbit": info, "errors": errors,
                     "timings": {x: t for x, t in timings.items() if "error" not in t}})
        msg = [f"qnnpack {qnn['gops']:.1f}" if qnn else "qnnpack -",
               f"best_int8 {b8['name']} {b8['gops']:.1f}" if b8 else "best_int8 -"]
        shown = sorted(ratios, key=lambda x: -g[x])
        msg += [f"{x} {g[x]:.1f} ({ratios[x]['vs_best_int8'] or 0:.2f}x)" for x in shown[:4]]
        msg += [f"+{len(shown) - 4} more lowbit"] if len(shown) > 4 else []
        print(" | ".join(msg) + (f" | {len(errors)} errors" if errors else ""), flush=True)
        del fns

    result = {
        "fingerprint": common.fingerprint(), "threads": args.threads,
        "config": {"sets": sets, "rounds": args.rounds, "min_time_s": args.min_time, "quick": args.quick,
                   "pairs": pairs, "lowbit_kernels": requested, "with_scalar": args.with_scalar,
                   "mnb_block_size": args.block_size,
                   "seed": args.seed, "statistic": "median of rounds, each round = one batch of >= "
                   "min_time per contender, contenders interleaved round-robin"},
        "timed": baselines.WHAT_IS_TIMED, "ratio_refs": {
            "qnnpack": "faster of torch_qnnpack_linear / torch_qnnpack_conv",
            "best_int8": f"fastest of {baselines.INT8_BEST_POOL} (linear or conv forms)"},
        "lowbit": lb_meta, "shapes": rows, "geomean": geomeans(rows),
    }
    out = Path(args.out or common.REPO / "bench" / "results" / f"gemm_{'_'.join(sets)}_t{args.threads}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
