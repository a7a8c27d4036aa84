"""Shared driver of the fuzz harnesses in this folder (docs/robustness.md).

Each harness defines ``test_one_input(data: bytes)``, which must either return
or raise one of the harness's *expected* exceptions (the clear, documented
errors of the API under test); anything else propagates and counts as a bug,
as does a crash (the process dies) or a hang (the caller's timeout).

Two engines:

* atheris (coverage-guided libFuzzer for Python, ``pip install atheris``),
  with the Python code of lowbit instrumented, when it imports;
* otherwise a seeded mutation fuzzer without coverage feedback (bit flips,
  byte overwrites with boundary values, insertions, deletions, truncation and
  splices of corpus entries), so that CI never silently skips fuzzing.

Run one harness by hand::

    PYTHONPATH=python python3 tests/fuzz/fuzz_model_file.py -runs=100000      # atheris flags
    PYTHONPATH=python python3 tests/fuzz/fuzz_model_file.py --engine=mutate --runs=2000 --seed=1

The mutation engine prints ``executions: N`` at the end, atheris (libFuzzer)
``Done N runs in S second(s)``; a failing input is printed (mutation engine)
or written to the work folder as ``crash-*`` (atheris). The seed corpus of a harness is
``tests/fuzz/corpus/<name>/`` (small files, in the repository); atheris
writes new inputs it finds into a scratch folder given with ``--workdir``,
never into the repository.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")

_INTERESTING = [b"\x00", b"\xff", b"\x7f", b"\x80", b"\x00\x00\x00\x80", b"\xff\xff\xff\xff", b"\xff\xff\xff\x7f",
                b"\x00\x00\x00\x00\x00\x00\xf0\x7f", b"\x00\x00\xc0\x7f", b"\x00\x00\x80\x7f", b"\x01\x00\x00\x00"]


def corpus_files(name: str) -> list:
    folder = os.path.join(CORPUS, name)
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)) if os.path.isdir(folder) else []


def _mutate(rng: random.Random, data: bytes, corpus: list) -> bytes:
    b = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 3, 8))):
        op = rng.randrange(7)
        if op == 0 and b:                      # flip a bit
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and b:                    # overwrite with a boundary value
            v = rng.choice(_INTERESTING)
            i = rng.randrange(len(b))
            b[i:i + len(v)] = v
        elif op == 2:                          # insert random bytes
            i = rng.randrange(len(b) + 1)
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
        elif op == 3 and b:                    # delete a range
            i = rng.randrange(len(b))
            del b[i:i + rng.randrange(1, 17)]
        elif op == 4 and b:                    # truncate
            del b[rng.randrange(len(b)):]
        elif op == 5 and corpus:               # splice with another corpus entry
            other = rng.choice(corpus)
            i, j = rng.randrange(len(b) + 1), rng.randrange(len(other) + 1)
            b = b[:i] + other[j:]
        elif op == 6 and b:                    # random byte
            b[rng.randrange(len(b))] = rng.randrange(256)
    return bytes(b)


def run_mutation_fuzzer(target, corpus: list, runs: int, seconds: float, seed: int) -> int:
    """Runs target on every corpus entry, then on mutations of them until
    `runs` executions or `seconds` elapse. Returns the number of executions."""
    rng = random.Random(seed)
    executions = 0
    for data in corpus:
        target(data)
        executions += 1
    pool = list(corpus) or [b""]
    end = time.monotonic() + seconds
    while executions < runs and time.monotonic() < end:
        data = _mutate(rng, rng.choice(pool), pool)
        try:
            target(data)
        except BaseException:
            sys.stderr.write(f"failing input (mutation fuzzer, seed {seed}, execution {executions}): "
                             f"{data.hex()}\n")
            raise
        executions += 1
    return executions


def main(name: str, target, instrumented_modules=("lowbit",)) -> None:
    """Command line of a harness (see the module docstring)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--engine", choices=("auto", "atheris", "mutate"), default="auto")
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", default=None)
    args, rest = parser.parse_known_args()
    runs = args.runs if args.runs is not None else 10**9
    seconds = args.seconds if args.seconds is not None else 3600.0
    seeds = [open(p, "rb").read() for p in corpus_files(name)]
    engine = args.engine
    if engine == "auto":
        try:
            import atheris  # noqa: F401
            engine = "atheris"
        except ImportError:
            engine = "mutate"
    if engine == "mutate":
        n = run_mutation_fuzzer(target, seeds, runs, seconds, args.seed)
        print(f"engine: mutate (seeded, no coverage feedback); executions: {n}")
        return

    import atheris

    # atheris reads and extends its corpus folders: give it a scratch copy
    work = args.workdir or tempfile.mkdtemp(prefix=f"lowbit-fuzz-{name}-")
    scratch = os.path.join(work, "corpus")
    if not os.path.isdir(scratch):
        shutil.copytree(os.path.join(CORPUS, name), scratch) if seeds else os.makedirs(scratch)
    # libFuzzer reports the executions itself ("Done N runs in S second(s)") and exits the process
    flags = [sys.argv[0], scratch, f"-seed={args.seed}", "-rss_limit_mb=4096", "-timeout=20",
             f"-artifact_prefix={work}{os.sep}"]
    if args.runs is not None:
        flags.append(f"-runs={args.runs}")
    if args.seconds is not None:
        flags.append(f"-max_total_time={int(max(1, args.seconds))}")
    print(f"engine: atheris; work folder {work}", flush=True)
    atheris.Setup(flags + rest, target)
    atheris.Fuzz()


def instrument():
    """Context manager: import the code under test with atheris coverage when
    atheris is there (a no-op otherwise)."""
    try:
        import atheris

        return atheris.instrument_imports(include=["lowbit"])
    except ImportError:
        import contextlib

        return contextlib.nullcontext()


# What a model that loaded or imported may raise when run: lowbit's own clear errors.
RUN_ERRORS = (ValueError, TypeError, RuntimeError, NotImplementedError)


def check_runs(model) -> None:
    """Run one image through a model that loaded: it computes, or raises one of
    RUN_ERRORS; anything else (or a crash, a hang) is a finding."""
    c, h, w = model.input_shape
    if c * h * w > 1 << 16:
        return  # a valid but large input: not worth the time of a fuzz iteration
    x = np.linspace(-2, 2, c * h * w, dtype=np.float32).reshape(1, c, h, w)
    try:
        model(x)
    except RUN_ERRORS:
        pass
