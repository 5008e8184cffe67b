"""Type stubs for `helixrt._core`, the Rust core. Checked against the built module by stubtest."""

from typing import Final

__all__ = ["__version__", "build_info", "noop"]

__version__: Final[str]

def build_info() -> dict[str, str]:
    """What this build of the Rust core is: version, Cargo profile, rustc and PyO3 versions."""

def noop() -> None:
    """Does nothing: measures the fixed cost of one call into the Rust core."""
