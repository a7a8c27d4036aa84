"""Estimated Arm64 speed of lowbit's hot loops against int8 microkernels, with llvm-mca.

No Arm hardware is needed (and none was used): each kernel source is compiled
for aarch64 with its tier's flags (GCC, -O3, as the library build does), the
steady-state inner loop is cut out of the assembly (the self-looping basic
block with the most instances of the kernel's key instruction, in the
function instantiation named below), and llvm-mca simulates it on LLVM's
scheduling models. Cycles per iteration -> MACs per cycle -> GOPS per GHz
(2 ops per MAC) and the ratio to the int8 reference loop of the same model
(bench/arm_mca/int8_ref.cc: sdot where the core has dotprod, smull/smlal2/
sadalp otherwise).

These are **estimates (llvm-mca), not measurements**: the loop alone, L1-hot
operands, no widening/flush passes, no driver overhead. LLVM falls back to
another core's model for some -mcpu names (LLVM 16: neoverse-n1 and
cortex-a76 use the Cortex-A57 model); the table names the model that was
really used, read from the resource unit names llvm-mca prints.

    python3 bench/arm_mca.py [--mca llvm-mca-16] [--markdown]

Needs aarch64-linux-gnu-g++ (Debian: g++-aarch64-linux-gnu; headers only,
no sysroot) and llvm-mca (Debian: llvm-16).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
CXX = "aarch64-linux-gnu-g++"
# the library's per-tier flags (CMakeLists.txt, Arm section)
FLAGS = {"neon": "-march=armv8-a", "neondot": "-march=armv8.2-a+dotprod",
         "neoni8mm": "-march=armv8.2-a+dotprod+i8mm"}
# -mcpu for llvm-mca, and the tiers each core has
CORES = [("cortex-a72", ("neon",)), ("cortex-a76", ("neon", "neondot")), ("neoverse-n1", ("neon", "neondot")),
         ("neoverse-v1", ("neon", "neondot", "neoni8mm")), ("neoverse-n2", ("neon", "neondot", "neoni8mm"))]


@dataclass
class Loop:
    name: str          # row label
    source: str        # file, relative to the repository
    tier: str          # flags to compile with, and the tier a core needs to run it
    function: str      # substring of the (mangled) function holding the loop
    key: str           # regex of the key instruction: the loop with most of them
    macs: int          # multiply-accumulates one iteration performs
    what: str          # how macs is counted
    reference: bool = False


LOOPS = [
    Loop("grouplut W1A1 (tbl, 4 MAC/lookup)", "csrc/kernels/grouplut/grouplut-neon.cc", "neon",
         "tileILi4ELi2ELi8E", r"\btbl\b", 4 * 64 * 4, "4 rows x 64 channels x gw=4"),
    Loop("grouplut W2A2 (tbl, 2 MAC/lookup)", "csrc/kernels/grouplut/grouplut-neon.cc", "neon",
         "tileILi4ELi2ELi8E", r"\btbl\b", 4 * 64 * 2, "4 rows x 64 channels x gw=2"),
    Loop("grouplut W3/W4 (tbl, 1 MAC/lookup)", "csrc/kernels/grouplut/grouplut-neon.cc", "neon",
         "tileILi4ELi2ELi32E", r"\btbl\b", 4 * 64 * 1, "4 rows x 64 channels x gw=1"),
    Loop("lutgemm W2A2 (paper LUT, tbl, 1 MAC/lookup)", "csrc/kernels/lutgemm/lutgemm-neon.cc", "neon",
         "lutgemm_w2a2_i8__neon", r"\btbl\b", 1 * 4 * 64, "1 row x 4 channels x 64 k"),
    # all tiles are inlined into one function; the loop with most cnt is W1A2's 1 x 4 tile
    Loop("bitserial W1A2 (and + cnt)", "csrc/kernels/bitserial/bitserial-neon.cc", "neon", "bitserial__neon",
         r"\bcnt\b", 1 * 4 * 256, "1 row x 4 channels x 256 k (2 activation planes)"),
    Loop("dotgemm neon (smlal int16)", "csrc/kernels/dotgemm/dotgemm-neon.cc", "neon", "dotgemm_4x8__neon",
         r"\bsmlal2?\b", 4 * 8 * 2, "4 rows x 8 channels x 2 k"),
    Loop("dot8 neon (mla int16)", "csrc/kernels/dot8/dot8-neon.cc", "neon", "dot8_4x8__neon", r"\bmla\b",
         4 * 8 * 4, "4 rows x 8 channels x 4 k"),
    Loop("dot8 neondot (udot + bias)", "csrc/kernels/dot8/dot8-neondot.cc", "neondot", "dot8_4x16__neondot",
         r"\budot\b", 4 * 16 * 16, "4 rows x 16 channels x 16 k (4 steps)"),
    Loop("dot8 neoni8mm (sudot)", "csrc/kernels/dot8/dot8-neoni8mm.cc", "neoni8mm", "dot8_4x16__neoni8mm",
         r"\bsudot\b", 4 * 16 * 16, "4 rows x 16 channels x 16 k (4 steps)"),
    Loop("int8 ref: sdot 4x16", "bench/arm_mca/int8_ref.cc", "neondot", "int8_sdot_4x16", r"\bsdot\b",
         4 * 16 * 4, "4 rows x 16 channels x 4 k", True),
    Loop("int8 ref: smull/smlal2/sadalp 4x4", "bench/arm_mca/int8_ref.cc", "neon", "int8_smull_4x4",
         r"\bsmull\b|\bsadalp\b", 4 * 4 * 16, "4 rows x 4 channels x 16 k", True),
]


def compile_asm(source: str, tier: str, tmp: str) -> str:
    out = os.path.join(tmp, f"{os.path.basename(source)}.{tier}.s")
    if not os.path.exists(out):
        subprocess.run([CXX, "-std=c++17", "-O3", FLAGS[tier], "-DLOWBIT_HAVE_ARM_KERNELS=1",
                        "-DLOWBIT_HAVE_X86_KERNELS=0", "-I", os.path.join(REPO, "csrc"), "-S",
                        os.path.join(REPO, source), "-o", out], check=True)
    return out


def functions(asm: str) -> dict:
    """Function label -> its lines (labels at column 0 that are not .L local labels)."""
    out, name = {}, None
    for line in asm.splitlines():
        m = re.match(r"^([A-Za-z_][\w.$]*):", line)
        if m and not line.startswith(".L"):
            name = m.group(1)
            out[name] = []
        elif name is not None:
            out[name].append(line)
    return out


def hot_loop(lines: list, key: str) -> list:
    """The instructions of the self-looping basic block (starts at label L,
    ends with a branch back to L, no other label inside) with most key
    instructions."""
    best, best_count = None, 0
    for i, line in enumerate(lines):
        m = re.match(r"^(\.L\w+):", line)
        if not m:
            continue
        label, body = m.group(1), []
        for nxt in lines[i + 1:]:
            if re.match(r"^\.L\w+:", nxt):
                body = None
                break
            s = nxt.strip()
            if not s or s.startswith("."):
                continue
            body.append(s)
            if re.match(r"^b\S*\s+" + re.escape(label) + "$", s) or \
               re.match(r"^(cbn?z|tbn?z)\s+.*," + re.escape(label) + "$", s):
                break
        else:
            body = None
        if not body or not re.search(re.escape(label) + "$", body[-1]):
            continue
        count = sum(bool(re.search(key, s)) for s in body)
        if count > best_count:
            best, best_count = body, count
    if best is None:
        raise RuntimeError(f"no self-looping block with {key!r}")
    return best


def run_mca(mca: str, body: list, cpu: str, tmp: str) -> tuple:
    path = os.path.join(tmp, "loop.s")
    with open(path, "w") as f:
        f.write("\n".join(body) + "\n")
    r = subprocess.run([mca, "-mtriple=aarch64-linux-gnu", f"-mcpu={cpu}", "-iterations=300", path],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return None, r.stderr.strip().splitlines()[0] if r.stderr.strip() else "llvm-mca failed"
    iters = int(re.search(r"^Iterations:\s+(\d+)", r.stdout, re.M).group(1))
    cycles = int(re.search(r"^Total Cycles:\s+(\d+)", r.stdout, re.M).group(1))
    units = re.findall(r"^\[\d+(?:\.\d+)?\]\s+-\s+(\S+)", r.stdout, re.M)
    model = model_name(units)
    return cycles / iters, model


def model_name(units: list) -> str:
    """The scheduling model, from its resource unit names (A57UnitB -> A57, N2UnitV0 -> N2)."""
    prefixes = sorted({re.match(r"([A-Za-z0-9]+?)Unit", u).group(1) for u in units if re.match(r"[A-Za-z0-9]+?Unit", u)})
    return "/".join(prefixes) if prefixes else "?"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mca", default=shutil.which("llvm-mca-16") or shutil.which("llvm-mca") or "llvm-mca")
    ap.add_argument("--markdown", action="store_true", help="print the README table")
    ap.add_argument("--show-loops", action="store_true", help="print each extracted loop")
    args = ap.parse_args(argv)
    version = subprocess.run([args.mca, "--version"], capture_output=True, text=True).stdout
    version = re.search(r"LLVM version ([\d.]+)", version)
    with tempfile.TemporaryDirectory() as tmp:
        bodies = {}
        for loop in LOOPS:
            asm = open(compile_asm(loop.source, loop.tier, tmp)).read()
            fns = [f for name, f in functions(asm).items() if loop.function in name]
            if not fns:
                raise RuntimeError(f"{loop.source}: no function matching {loop.function}")
            bodies[loop.name] = hot_loop(max(fns, key=len), loop.key)
            if args.show_loops:
                print(f"---- {loop.name}: {len(bodies[loop.name])} instructions")
                print("\n".join(bodies[loop.name]))
        results = {}  # (cpu, loop name) -> (cycles/iter, model)
        for cpu, tiers in CORES:
            for loop in LOOPS:
                if loop.tier in tiers:
                    results[cpu, loop.name] = run_mca(args.mca, bodies[loop.name], cpu, tmp)
    print(f"llvm-mca {version.group(1) if version else '?'}; GCC {CXX} -O3; "
          "estimated (llvm-mca), not measured")
    for cpu, tiers in CORES:
        models = {results[cpu, l.name][1] for l in LOOPS if (cpu, l.name) in results and results[cpu, l.name][0]}
        ref_name = "int8 ref: sdot 4x16" if "neondot" in tiers else "int8 ref: smull/smlal2/sadalp 4x4"
        ref = results[cpu, ref_name]
        ref_mpc = next(l.macs for l in LOOPS if l.name == ref_name) / ref[0]
        print()
        print(f"-mcpu={cpu}: model used {', '.join(sorted(models))}; ratio against {ref_name}")
        if args.markdown:
            print("| loop | instructions | cycles/iter | MACs/iter | MACs/cycle | GOPS/GHz | vs int8 |")
            print("|---|---|---|---|---|---|---|")
        for loop in LOOPS:
            if (cpu, loop.name) not in results:
                continue
            cyc, model = results[cpu, loop.name]
            if cyc is None:
                print(f"  {loop.name}: llvm-mca: {model}")
                continue
            mpc = loop.macs / cyc
            cells = (loop.name, str(len(bodies[loop.name])), f"{cyc:.2f}", str(loop.macs), f"{mpc:.1f}",
                     f"{2 * mpc:.1f}", f"{mpc / ref_mpc:.2f}x")
            if args.markdown:
                print("| " + " | ".join(cells) + " |")
            else:
                print(f"  {cells[0]:<36} {cells[1]:>4} instr  {cells[2]:>6} cyc/iter  {cells[3]:>4} MAC/iter  "
                      f"{cells[4]:>6} MAC/cyc  {cells[5]:>6} GOPS/GHz  {cells[6]:>6} vs int8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
