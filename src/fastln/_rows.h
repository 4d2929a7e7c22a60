/* The row kernels, compiled once per SIMD path, and the run-time choice between them.
 *
 * The default build targets the compiler's baseline (x86-64 = SSE2). On x86-64 with GCC or clang,
 * _rows_impl.h is compiled again with target attributes for AVX2+FMA and for AVX-512 (and its
 * bfloat16 kernels once more for AVX512_BF16), and _select_simd_path (_cpu.pyx) picks the widest
 * path the running CPU supports, so one wheel runs everywhere and uses wide vectors where they
 * exist. No flag reads the build machine's CPU.
 */
#ifndef FASTLN_ROWS_H
#define FASTLN_ROWS_H

#include <Python.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(_MSC_VER) && !defined(__clang__)
#define restrict __restrict
#endif

/* GCC/clang vector extensions; elsewhere (or with -DFASTLN_NO_VECTOR_EXT, to test it) the
 * kernels' vectors are single elements. */
#if (defined(__GNUC__) || defined(__clang__)) && !defined(FASTLN_NO_VECTOR_EXT)
#define FASTLN_VECTOR_EXT 1
#else
#define FASTLN_VECTOR_EXT 0
#endif

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#define FASTLN_X86_DISPATCH 1
#include <cpuid.h>
#include <immintrin.h>
#else
#define FASTLN_X86_DISPATCH 0
#endif

/* Non-temporal stores write a large output straight to memory, without first reading each of its
 * cache lines (as a plain store does) or evicting the input from the cache. */
#if FASTLN_X86_DISPATCH && FASTLN_VECTOR_EXT
#define FASTLN_STREAM_STORES 1
#define FASTLN_SFENCE() _mm_sfence()
#else
#define FASTLN_STREAM_STORES 0
#define FASTLN_SFENCE() ((void)0)
#endif

/* FASTLN_IN_REGISTER(v) makes the compiler hold the value v in a register (it emits no
 * instruction). Short of registers, GCC 12 gives a loaded vector that has several uses no
 * register of its own and folds the load into each use instead, reading the same bytes from the
 * cache once per use; see bwd_vec in _rows_impl.h. */
#if FASTLN_X86_DISPATCH && defined(__x86_64__)
#define FASTLN_IN_REGISTER(v) __asm__("" : "+v"(v))
#else
#define FASTLN_IN_REGISTER(v) ((void)0)
#endif

#if defined(__GNUC__) || defined(__clang__)
#define FASTLN_ALWAYS_INLINE inline __attribute__((always_inline))
#define FASTLN_NOINLINE __attribute__((noinline))
#else
#define FASTLN_ALWAYS_INLINE inline
#define FASTLN_NOINLINE
#endif

/* flags of norm_fwd and norm_bwd */
#define FASTLN_STREAM 1    /* write the large outputs with non-temporal stores */
#define FASTLN_RMS 2       /* RMSNorm: no mean, no bias */
#define FASTLN_IN_L2 4     /* forward: the call's arrays fit in its threads' L2 caches */
#define FASTLN_FETCH 8     /* forward: fetch ahead as FASTLN_STREAM does, but store plainly */

#ifndef FASTLN_BUILD_FLAGS
#define FASTLN_BUILD_FLAGS ""
#endif

/* Forward: x, residual (or NULL), w, b, sum, y, mean, rstd, rows, n, eps, flags.
 * Backward: dy, x, mean, rstd, w, dsum (or NULL), dx, dw partials, db partials, rows, n, flags. */
#define FASTLN_KERNEL_TYPES(T, TS)                                                            \
    typedef void (*fastln_fwd_##TS)(const T *, const T *, const T *, const T *, T *, T *, T *,  \
                                    T *, Py_ssize_t, Py_ssize_t, double, int);                \
    typedef void (*fastln_bwd_##TS)(const T *, const T *, const T *, const T *, const T *,      \
                                    const T *, T *, double *, double *, Py_ssize_t,           \
                                    Py_ssize_t, int);                                         \
    typedef void (*fastln_sum_##TS)(double *, Py_ssize_t, Py_ssize_t, Py_ssize_t, T *);
FASTLN_KERNEL_TYPES(float, f32)
FASTLN_KERNEL_TYPES(double, f64)
/* 16-bit data (uint16_t bits) with float weight, bias, statistics and partial sums. */
typedef void (*fastln_fwd_half)(const uint16_t *, const uint16_t *, const float *, const float *,
                                uint16_t *, uint16_t *, float *, float *, Py_ssize_t, Py_ssize_t,
                                double, int);
typedef void (*fastln_bwd_half)(const uint16_t *, const uint16_t *, const float *, const float *,
                                const float *, const uint16_t *, uint16_t *, double *, double *,
                                Py_ssize_t, Py_ssize_t, int);

typedef struct {
    const char *name;
    fastln_fwd_f32 norm_fwd_f32;
    fastln_fwd_f64 norm_fwd_f64;
    fastln_fwd_half norm_fwd_f16;
    fastln_fwd_half norm_fwd_bf16;
    fastln_bwd_f32 norm_bwd_f32;
    fastln_bwd_f64 norm_bwd_f64;
    fastln_bwd_half norm_bwd_f16;
    fastln_bwd_half norm_bwd_bf16;
    fastln_sum_f32 sum_blocks_f32;
    fastln_sum_f64 sum_blocks_f64;
} fastln_kernels;

#define FASTLN_CAT3_(a, b, c) a##_##b##_##c
#define FASTLN_CAT3(a, b, c) FASTLN_CAT3_(a, b, c)
#define NAME(f) FASTLN_CAT3(f, FASTLN_PATH, FASTLN_TS)

/* Statistics are formed in blocks of BLOCK vectors; the backward sums the dweight and
 * dbias shares of up to GROUP_ROWS rows in registers, and of STAGE_ROWS rows (a multiple of
 * GROUP_ROWS and of 2) in float32, before adding them to its double partials. */
#define BLOCK 16
#define GROUP_ROWS 4
#define STAGE_ROWS 16

/* Each path: FASTLN_PATH, TARGET and REGISTER_BYTES, then _rows_path.h instantiates it. */
#define FASTLN_PATH baseline
#define TARGET
#define REGISTER_BYTES 16
#include "_rows_path.h"

#if FASTLN_X86_DISPATCH
#define FASTLN_PATH avx2
#define TARGET __attribute__((target("avx2,fma,f16c")))
#define REGISTER_BYTES 32
#include "_rows_path.h"

#define FASTLN_PATH avx512
#if defined(__clang__)
/* clang rejects (and then drops) the whole attribute if it names prefer-vector-width; it lowers
 * the 64-byte vector types to zmm registers anyway. */
#define TARGET __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c")))
#else
#define TARGET                                                                               \
    __attribute__((target(                                                                  \
        "avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c,prefer-vector-width=512")))
#endif
#define REGISTER_BYTES 64
#include "_rows_path.h"

/* avx512 with AVX512_BF16 (Zen 4 and later, Cooper Lake, Sapphire Rapids and later), which
 * rounds float32 to bfloat16 in one instruction: the bfloat16 kernels compiled again, the others
 * avx512's. Compilers from before it (GCC 10, clang 9) build without this path. */
#if defined(__clang__) ? __clang_major__ >= 9 : __GNUC__ >= 10
#define FASTLN_BF16_PATH 1     /* path 3 */
#define FASTLN_NATIVE_BF16 1
#define FASTLN_PATH avx512bf16
#if defined(__clang__)
#define TARGET                                                                               \
    __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")))
#else
#define TARGET                                                                               \
    __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c,"    \
                          "prefer-vector-width=512")))
#endif
#define REGISTER_BYTES 64
#include "_rows_path.h"
#undef FASTLN_NATIVE_BF16
#endif
#endif /* FASTLN_X86_DISPATCH */
#ifndef FASTLN_BF16_PATH
#define FASTLN_BF16_PATH 0
#endif

#define FASTLN_TABLE(path)                                                                    \
    {#path,                                                                                   \
     norm_fwd_##path##_f32, norm_fwd_##path##_f64,                                            \
     norm_fwd_##path##_f16, norm_fwd_##path##_bf16,                                           \
     norm_bwd_##path##_f32, norm_bwd_##path##_f64,                                            \
     norm_bwd_##path##_f16, norm_bwd_##path##_bf16,                                           \
     sum_blocks_##path##_f32, sum_blocks_##path##_f64}

/* Narrowest first. */
static const fastln_kernels fastln_paths[] = {
    FASTLN_TABLE(baseline),
#if FASTLN_X86_DISPATCH
    FASTLN_TABLE(avx2),
    FASTLN_TABLE(avx512),
#if FASTLN_BF16_PATH
    {"avx512bf16",
     norm_fwd_avx512_f32, norm_fwd_avx512_f64, norm_fwd_avx512_f16, norm_fwd_avx512bf16_bf16,
     norm_bwd_avx512_f32, norm_bwd_avx512_f64, norm_bwd_avx512_f16, norm_bwd_avx512bf16_bf16,
     sum_blocks_avx512_f32, sum_blocks_avx512_f64},
#endif
#endif
};
#define FASTLN_NPATHS ((int)(sizeof(fastln_paths) / sizeof(fastln_paths[0])))

#if FASTLN_X86_DISPATCH
/* F16C (float16 conversions), which older compilers' __builtin_cpu_supports cannot name:
 * CPUID leaf 1, ECX bit 29. */
static int fastln_f16c(void)
{
    unsigned int eax, ebx, ecx, edx;
    return __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx >> 29 & 1u);
}
#endif

#if FASTLN_BF16_PATH
/* AVX512_BF16: CPUID leaf 7, subleaf 1, EAX bit 5. */
static int fastln_avx512bf16(void)
{
    unsigned int eax, ebx, ecx, edx;
    return __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) && (eax >> 5 & 1u);
}
#endif

/* 1 if the running CPU can execute path i. */
static int fastln_path_supported(int i)
{
#if FASTLN_X86_DISPATCH
    __builtin_cpu_init();
    if (i == 1)
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && fastln_f16c();
#if FASTLN_BF16_PATH
    if (i == 3 && !fastln_avx512bf16())
        return 0;
#endif
    if (i >= 2)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && fastln_f16c();
#endif
    return i == 0;
}

static const fastln_kernels *fastln_current = &fastln_paths[0];

#endif /* FASTLN_ROWS_H */
