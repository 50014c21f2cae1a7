"""syswatch: a Linux read/write system-call monitor (collector, API, subscriber scripts).

One importable name per module: ``syswatch.collector``, ``syswatch.api``, ``syswatch.shared``,
``syswatch.subscribers``. In a checkout the code lives where the owner's layout puts it
(collector/, api/, shared/, subscribers/ at the top) and this folder holds relative symlinks to
those folders, so the same imports work from a checkout with no install, and IDEs and type
checkers follow them. Installed (``pip install .``), pyproject.toml maps each folder into this
package, so nothing generic like ``api`` or ``shared`` lands in site-packages. Every import is
absolute (``from syswatch.collector.program import X``); ruff enforces it (docs/TESTING.md).
"""
__version__ = "0.2.0"    # the one version: pyproject.toml, --version, syswatch_build_info
