"""The package's vLLM entry point, installed the way pip installs a distribution's metadata, in
a folder that tests put on PYTHONPATH: vLLM's plugin loader (importlib.metadata entry points)
then finds it in every process it starts, as it would after `pip install loraflip[vllm]`."""
from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def declared_plugins() -> dict:
    """The vllm.general_plugins entry points pyproject.toml declares."""
    declared = tomllib.loads((REPO / "client/python/pyproject.toml").read_text())
    return declared["project"]["entry-points"]["vllm.general_plugins"]


def install_entry_points(where: Path) -> str:
    """Writes loraflip's dist-info (metadata and entry points) under `where`; returns it."""
    dist = where / "loraflip-0.1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: loraflip\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text(
        "[vllm.general_plugins]\n" + "".join(f"{k} = {v}\n" for k, v in declared_plugins().items()))
    return str(where)
