"""A Python writer and Python readers in separate processes: every word every reader reads
belongs to the version it pinned."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

WORKER = str(Path(__file__).with_name("mp_worker.py"))


def test_readers_in_other_processes_never_see_a_torn_version(daemon, name):
    versions = 150
    readers = [subprocess.Popen([sys.executable, WORKER, "reader", daemon.dir, name, str(versions)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    writer = subprocess.run([sys.executable, WORKER, "writer", daemon.dir, name, str(versions)],
                            capture_output=True, text=True, timeout=60)
    assert writer.returncode == 0, writer.stderr
    results = []
    for r in readers:
        out, err = r.communicate(timeout=60)
        assert r.returncode == 0, out + err
        results.append(json.loads(out.strip().splitlines()[-1]))
    for res in results:
        assert res["torn"] == 0 and res["regressions"] == 0 and res["last"] == versions
        assert res["versions_seen"] >= 2  # the readers really ran while versions flipped
