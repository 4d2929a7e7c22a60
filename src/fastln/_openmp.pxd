# The OpenMP shim: every OpenMP call fastln makes is cimported from here, so the same Cython
# builds with OpenMP (thread count from omp_get_max_threads, which follows OMP_NUM_THREADS and
# threadpoolctl) or without it (one thread; Cython's prange then runs as a plain loop).

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define FASTLN_OPENMP 1
    #else
    #define FASTLN_OPENMP 0
    static int omp_get_max_threads(void) { return 1; }
    #endif
    """
    bint FASTLN_OPENMP
    int omp_get_max_threads() noexcept nogil
