"""A missing Python dependency is a set-up error like any other: one line naming what to install, exit 2.

Every entry point (collector, API, tail, top, the Curve key tool, and any new console script)
calls ``require(program, *modules)`` before its first third-party import, so a checkout run with
an incomplete set of Debian packages, or a venv that lacks one, says

    error: syswatch-api needs the Python package prometheus_client, which is not installed: pip install
    'prometheus_client>=0.16,<1' (Debian: apt-get install python3-prometheus-client)     (one line)

instead of a ModuleNotFoundError traceback. Standard library only: it runs before anything else.
REQUIREMENTS is the one table of runtime dependencies besides pyproject.toml's list, which a unit
test keeps equal to it.
"""
from __future__ import annotations

import importlib
import sys

# import name -> (pip requirement as in pyproject.toml, the Debian package that provides it)
REQUIREMENTS: dict[str, tuple[str, str]] = {
    "zmq": ("pyzmq>=24,<28", "python3-zmq"),
    "bottle": ("bottle>=0.12,<0.14", "python3-bottle"),
    "waitress": ("waitress>=2.1,<4", "python3-waitress"),
    "prometheus_client": ("prometheus_client>=0.16,<1", "python3-prometheus-client"),
}


def missing_message(program: str, module: str, exc: ImportError) -> str:
    """The one line for ``module`` that ``program`` could not import."""
    req, deb = REQUIREMENTS.get(module, (module, ""))
    dist = req.split(">")[0].split("<")[0].split("=")[0]
    fix = f"pip install '{req}'" + (f" (Debian: apt-get install {deb})" if deb else "")
    if getattr(exc, "name", None) in (module, None) and isinstance(exc, ModuleNotFoundError):
        return f"error: {program} needs the Python package {dist}, which is not installed: {fix}"
    # present but broken: e.g. python3-zmq without its cffi backend, or a wheel for another Python
    reason = " ".join(str(exc).split())[:300]
    return f"error: {program} cannot import the Python package {dist} ({reason}): reinstall it: {fix}"


def require(program: str, *modules: str) -> None:
    """Import each module; the first that fails ends the program: one line on stderr, exit 2."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            print(missing_message(program, module, exc), file=sys.stderr)
            raise SystemExit(2) from None
