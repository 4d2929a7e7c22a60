"""How many threads fastln uses."""

import operator

from fastln import _cpu

# The most threads a call may be asked to use. Large calls split their rows into thousands of
# blocks and would start a thread for each block up to the count asked for.
MAX_THREADS = 1024


def set_num_threads(n):
    """Set the number of threads fastln's kernels use.

    Parameters
    ----------
    n : int or None
        A count from 1 to 1024, used by every later call until changed. ``None`` returns to the
        default: OpenMP's, which follows ``OMP_NUM_THREADS`` and threadpoolctl's limits.
        An explicit count takes precedence over both.

    Examples
    --------
    >>> import fastln
    >>> fastln.set_num_threads(1)
    >>> fastln.get_num_threads()
    1
    >>> fastln.set_num_threads(None)
    """
    if n is not None:
        if isinstance(n, bool):
            raise TypeError(f"n must be a positive int or None, got {n!r}")
        try:
            n = operator.index(n)
        except TypeError:
            raise TypeError(f"n must be a positive int or None, got {n!r}") from None
        if not 1 <= n <= MAX_THREADS:
            raise ValueError(f"n must be a positive int up to {MAX_THREADS} or None, got {n}")
    _cpu.set_num_threads(n)


def get_num_threads():
    """The number of threads a large call uses (1 in a build without OpenMP).

    Small inputs always run on one thread: starting threads would cost more than it saves.
    """
    return _cpu.get_num_threads()
