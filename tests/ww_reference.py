"""Run WeightWatcher 0.7.7 on a model folder in a child process and return its details.

WeightWatcher reconfigures the root logger and silences every warning when imported, so it never
runs inside the test process. Usage: `python -m tests.ww_reference FOLDER OUT.json [--randomize]`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def ww_details(folder: Path, out: Path, *, randomize: bool = False) -> dict[str, dict[str, Any]]:
    """WeightWatcher's per-layer details, keyed by tensor name (layer name + '.weight')."""
    if not out.exists():
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
        args = [sys.executable, "-m", "tests.ww_reference", str(folder), str(out)]
        subprocess.run(
            args + (["--randomize"] if randomize else []),
            check=True,
            env=env,
            capture_output=True,
            timeout=1800,
            cwd=Path(__file__).parent.parent,
        )
    return {row["name"] + ".weight": row for row in json.loads(out.read_text())}


def _main() -> None:
    import numpy as np
    import weightwatcher as ww

    folder, out = sys.argv[1], Path(sys.argv[2])
    np.random.seed(0)  # WW shuffles with the global numpy RNG
    randomize = "--randomize" in sys.argv  # with WeightWatcher's MP fit of W itself too
    details = ww.WeightWatcher(model=folder).analyze(randomize=randomize, mp_fit=randomize)
    out.write_text(details.to_json(orient="records"))


if __name__ == "__main__":
    _main()
