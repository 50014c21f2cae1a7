"""syswatch: a Linux read/write system-call monitor (collector, API, subscriber scripts).

Installed (``pip install .``), the project is this one package: ``syswatch.collector``,
``syswatch.api``, ``syswatch.shared``, ``syswatch.subscribers`` (pyproject.toml maps each
top-level directory of the checkout into it), so nothing generic like ``api`` or ``shared``
lands in site-packages. In a checkout those directories stay at the top, where the owner's
layout fixes them; the path entry below makes ``syswatch.<name>`` find them there, so the
same imports work in both. Code imports across packages as ``syswatch.shared...`` and within
a package relatively, which is why ``python -m collector.collector`` keeps working too.
"""
__version__ = "0.2.0"    # the one version: pyproject.toml, --version, syswatch_build_info

import os as _os

_here = _os.path.dirname(_os.path.abspath(__file__))
if not _os.path.isdir(_os.path.join(_here, "shared")):    # a checkout, not an installed package
    __path__.append(_os.path.dirname(_here))
