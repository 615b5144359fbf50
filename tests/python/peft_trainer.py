"""A trainer process for test_peft.py: publishes versions 1..N of an adapter whose weights are
tiny_models.version_weights(v), pausing between them so a generation loop sees several.

usage: peft_trainer.py RUNTIME_DIR NAME VERSIONS PAUSE_S"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "client" / "python"))
import loraflip  # noqa: E402
import tiny_models  # noqa: E402


def main(runtime_dir: str, name: str, versions: int, pause: float) -> int:
    client = loraflip.Client(runtime_dir)
    model = tiny_models.peft_model()
    for v in range(1, versions + 1):
        got = client.publish(name, tiny_models.version_weights(v, model),
                             config=tiny_models.lora_config())
        if got != v:
            print(f"trainer: expected version {v}, got {got}", file=sys.stderr)
            return 1
        time.sleep(pause)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
