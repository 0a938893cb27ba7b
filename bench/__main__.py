"""`python -m bench all ...`: every benchmark, one JSON and the table of
docs/benchmarks.md (see bench/all.py); `python -m bench NAME ...` runs one
benchmark script (bench/NAME.py) with its own arguments."""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    scripts = sorted(p.stem for p in BENCH.glob("*.py") if not p.stem.startswith("_"))
    if not argv or argv[0] in {"-h", "--help"}:
        print(f"usage: python -m bench {{{','.join(scripts)}}} [ARGS...]")
        print(__doc__.splitlines()[0])
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in scripts:
        print(
            f"python -m bench: no benchmark {name!r}; the benchmarks are {', '.join(scripts)}",
            file=sys.stderr,
        )
        return 2
    sys.path.insert(0, str(BENCH))
    if name == "all":
        import all as bench_all  # bench/all.py

        return int(bench_all.main(rest, prog="python -m bench all"))
    sys.argv = [str(BENCH / f"{name}.py"), *rest]
    runpy.run_path(sys.argv[0], run_name="__main__")
    return 0


if __name__ == "__main__":
    try:
        code = main(sys.argv[1:])
        sys.stdout.flush()
    except BrokenPipeError:  # the reader went away (`| head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    raise SystemExit(code)
