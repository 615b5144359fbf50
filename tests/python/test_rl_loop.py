"""The README's main example runs end to end: daemon, trainer and generation loop."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "python" / "rl_loop.py"


def test_the_rl_loop_publishes_every_step_and_never_reads_a_torn_version():
    r = subprocess.run([sys.executable, str(EXAMPLE), "--steps", "25"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "torn reads:         0" in r.stdout
    assert "versions published: 25" in r.stdout
    seen = int(re.search(r"versions seen:\s+(\d+)", r.stdout).group(1))
    assert 2 <= seen <= 25
    assert "loraflipd stopped (exit 0), arena removed" in r.stdout
    losses = [float(x) for x in re.findall(r"trainer: step +\d+ loss ([0-9.]+)", r.stdout)]
    assert losses[-1] < losses[0]  # real training happened
