"""Memory the API takes for one large message goes back to the system when the message is done.

glibc's malloc raises its mmap threshold each time a large block is freed, up to 32 MiB: after a
few of the large buffers a stream can bring (a message up to the API's 8 MiB limit, its decoded
text, a big /stats answer), such blocks come from the heap instead, and the heap rarely shrinks.
Measured with the soak's load (5,000 events/s, the hostile messages, HTTP abuse) on one API for
180 s: RSS 73 -> 109 MiB and still climbing with the default, flat at 48-49 MiB with the threshold
fixed at 128 KiB (a fixed threshold also stops glibc adjusting the trim threshold).
"""
from __future__ import annotations

import ctypes

M_MMAP_THRESHOLD = -3          # glibc's <malloc.h>
MMAP_THRESHOLD = 128 * 1024    # glibc's initial value, kept: blocks above it are mmapped and unmapped


def return_large_blocks() -> bool:
    """Fix glibc's mmap threshold (no-op elsewhere, e.g. musl); True if it took effect."""
    try:
        mallopt = ctypes.CDLL(None).mallopt     # the C library this interpreter runs with
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
