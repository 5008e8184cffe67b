"""Check the machine and measure the Rust core's call cost from Python, as `helixrt` does."""

from __future__ import annotations

import sys

import helixrt
from helixrt.bench import run_bench
from helixrt.doctor import run_doctor

print(f"helixrt {helixrt.__version__}")
run_doctor(sys.stdout)
run_bench(quick=True, only=["core"])
