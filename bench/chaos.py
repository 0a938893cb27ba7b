"""Faults under steady load, and a table of the calls each client kind lost.

    .venv/bin/python bench/chaos.py [--scenarios a,b] [--seconds S] [--observe S]
    .venv/bin/python bench/chaos.py --list

The same as `lookaside chaos`; see lookaside/chaos/run.py and
docs/reliability.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lookaside.chaos.run import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
