"""Fixtures: a real loraflipd per test module, with its own instance and runtime directory."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "client" / "python"))


def daemon_path() -> str:
    """$LORAFLIPD, else the daemon in a meson build folder of this checkout."""
    env = os.environ.get("LORAFLIPD")
    if env:
        return env
    for build in ("build", "builddir"):
        p = REPO / build / "daemon" / "loraflipd"
        if p.exists():
            return str(p)
    pytest.fail("no loraflipd: build it (meson setup build && ninja -C build) or set LORAFLIPD")


class Daemon:
    def __init__(self, tag: str, arena: str = "64M", extra=()):
        self.binary = daemon_path()
        self.instance = f"py{tag}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.root = tempfile.mkdtemp(prefix="lfpy-", dir="/tmp")
        self.dir = os.path.join(self.root, "run")
        self.arena = arena
        self.extra = list(extra)
        self.proc = None

    def start(self) -> "Daemon":
        self.log = open(os.path.join(self.root, "daemon.log"), "wb")
        self.proc = subprocess.Popen(
            [self.binary, "--instance", self.instance, "--runtime-dir", self.dir,
             "--arena-size", self.arena, "--log-level", "warn", *self.extra],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not os.path.exists(os.path.join(self.dir, "control")):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("loraflipd did not start: " + self.read_log())
            time.sleep(0.01)
        return self

    def read_log(self) -> str:
        return Path(self.root, "daemon.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        subprocess.run([self.binary, "--instance", self.instance, "--remove-arena"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def daemon():
    d = Daemon("m").start()
    yield d
    d.stop()


@pytest.fixture
def client(daemon):
    import loraflip
    c = loraflip.Client(daemon.dir)
    yield c
    c.close()


@pytest.fixture
def name(request):
    """An adapter name unique to the test."""
    return "t-" + uuid.uuid4().hex[:10]
