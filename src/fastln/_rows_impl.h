/* Row kernels of fastln, written once and compiled once per (SIMD path, dtype) by _rows.h.
 *
 * The includer defines:
 *   T               element type of the arithmetic (float or double)
 *   FASTLN_HALF     (optional) 1 or 2: the data is stored as float16 or bfloat16 (T is float),
 *                   converted on every load and rounded on every store; without it, as T
 *   NAME(f)         the name of function f for this (path, dtype), e.g. f_avx2_f32
 *   TARGET          the function attribute that selects the instruction set ("" for baseline)
 *   REGISTER_BYTES  the SIMD register width of the path
 * and _rows.h defines BLOCK (vectors per statistics block) and GROUP_ROWS.
 *
 * Vectors of W = REGISTER_BYTES / sizeof(T) elements are GCC/clang vector extensions, which every
 * path lowers to its own instructions; with another compiler a "vector" is one element and the
 * same code runs scalar. Nothing here knows about threads: _cpu.pyx splits rows into blocks.
 *
 * Accuracy: every row is centred on pivots taken from the input's own values (in the forward's
 * statistics each lane's mean of its first values, in its output the row's first element, in
 * the backward the saved mean). A difference x - pivot is exact for the rows that matter
 * (Sterbenz), and otherwise rounded once relative to itself, so the statistics only see the
 * spread of the row, never its offset, and rows like 3e4 + 0.01 * randn keep all their digits.
 * Short sums are formed in T, everything that accumulates over a row or over rows in double.
 */

#if FASTLN_VECTOR_EXT
typedef T NAME(vec) __attribute__((vector_size(REGISTER_BYTES), aligned(sizeof(T)), may_alias));
#define W ((int)(REGISTER_BYTES / sizeof(T)))
#else
typedef T NAME(vec);
#define W 1
#endif
#define V NAME(vec)

/* V is may_alias with the alignment of T, so these are plain unaligned vector moves. */
static TARGET inline V NAME(load)(const T *p) { return *(const V *)p; }

static TARGET inline void NAME(store)(T *p, V v) { *(V *)p = v; }

/* A non-temporal store of v to p, which must be aligned to REGISTER_BYTES. */
static TARGET inline void NAME(stream)(T *p, V v)
{
#if FASTLN_STREAM_STORES && REGISTER_BYTES == 64
    _mm512_stream_si512((void *)p, (__m512i)v);
#elif FASTLN_STREAM_STORES && REGISTER_BYTES == 32
    _mm256_stream_si256((__m256i *)p, (__m256i)v);
#elif FASTLN_STREAM_STORES && REGISTER_BYTES == 16
    _mm_stream_si128((__m128i *)p, (__m128i)v);
#else
    NAME(store)(p, v);
#endif
}

/* The data (x, residual, y, sum, dy, dsum, dx) is stored as D: T, or 16-bit values that are
 * widened to T as they are loaded and rounded to nearest even as they are stored (see
 * _half_impl.h). weight, bias, mean and rstd are always T. lds, sts and streams load, store and
 * stream a vector of W values, ld1 and st1 one value; stream_copy streams W values of D from
 * src to p (aligned as for streams) as they are. */
#ifndef FASTLN_HALF
typedef T NAME(data);
static TARGET inline V NAME(lds)(const T *p) { return NAME(load)(p); }
static TARGET inline void NAME(sts)(T *p, V v) { NAME(store)(p, v); }
static TARGET inline void NAME(streams)(T *p, V v) { NAME(stream)(p, v); }
static TARGET inline void NAME(stream_copy)(T *p, const T *src)
{
    NAME(stream)(p, NAME(load)(src));
}
static TARGET inline T NAME(ld1)(const T *p) { return *p; }
static TARGET inline void NAME(st1)(T *p, T v) { *p = v; }
#else
#define FASTLN_HCAT(f) FASTLN_CAT3(f, FASTLN_PATH, half)
#if FASTLN_HALF == 1
#define FASTLN_H2F FASTLN_HCAT(h2f)
#define FASTLN_F2H FASTLN_HCAT(f2h)
#define FASTLN_VLOAD FASTLN_HCAT(vload_f16)
#define FASTLN_VPACK FASTLN_HCAT(vpack_f16)
#else
#define FASTLN_H2F FASTLN_HCAT(bf2f)
#define FASTLN_F2H FASTLN_HCAT(f2bf)
#define FASTLN_VLOAD FASTLN_HCAT(vload_bf16)
#define FASTLN_VPACK FASTLN_HCAT(vpack_bf16)
#endif
typedef uint16_t NAME(data);
static TARGET inline T NAME(ld1)(const uint16_t *p) { return FASTLN_H2F(*p); }
static TARGET inline void NAME(st1)(uint16_t *p, T v) { *p = FASTLN_F2H(v); }
#if FASTLN_VECTOR_EXT
static TARGET inline V NAME(lds)(const uint16_t *p) { return (V)FASTLN_VLOAD(p); }
static TARGET inline void NAME(sts)(uint16_t *p, V v)
{
    FASTLN_HCAT(hstore)(p, FASTLN_VPACK(v), 0);
}
/* A non-temporal store; p aligned to REGISTER_BYTES / 2. */
static TARGET inline void NAME(streams)(uint16_t *p, V v)
{
    FASTLN_HCAT(hstore)(p, FASTLN_VPACK(v), 1);
}
static TARGET inline void NAME(stream_copy)(uint16_t *p, const uint16_t *src)
{
    FASTLN_HCAT(hbits) h;
    memcpy(&h, src, sizeof h);
    FASTLN_HCAT(hstore)(p, h, 1);
}
#else
static TARGET inline V NAME(lds)(const uint16_t *p) { return NAME(ld1)(p); }
static TARGET inline void NAME(sts)(uint16_t *p, V v) { NAME(st1)(p, v); }
static TARGET inline void NAME(streams)(uint16_t *p, V v) { NAME(st1)(p, v); }
static TARGET inline void NAME(stream_copy)(uint16_t *p, const uint16_t *src) { *p = *src; }
#endif
#undef FASTLN_H2F
#undef FASTLN_F2H
#undef FASTLN_VLOAD
#undef FASTLN_VPACK
#undef FASTLN_HCAT
#endif
#define D NAME(data)
/* 1 where sts2 stores two vectors with one rounding instruction (bfloat16 on the avx512bf16
 * path), else 0. */
#if defined(FASTLN_HALF) && FASTLN_HALF == 2 && FASTLN_NATIVE_BF16 && FASTLN_X86_DISPATCH && \
    FASTLN_VECTOR_EXT && REGISTER_BYTES == 64
#define FASTLN_STS2 1
#else
#define FASTLN_STS2 0
#endif

/* Vectors v0 and v1 stored to p and p + W, with the bits sts gives each. */
static TARGET FASTLN_ALWAYS_INLINE void NAME(sts2)(D *p, V v0, V v1)
{
#if FASTLN_STS2
    FASTLN_CAT3(vstore2_bf16, FASTLN_PATH, half)(p, v0, v1);
#else
    NAME(sts)(p, v0);
    NAME(sts)(p + W, v1);
#endif
}
/* The longest 16-bit rows the forward reads back from a scratch row in T (see fwd_rows). */
#define FASTLN_SCRATCH_MAX 1600
/* 1 where the data is float16, else 0. */
#if defined(FASTLN_HALF) && FASTLN_HALF == 1
#define FASTLN_F16 1
#else
#define FASTLN_F16 0
#endif

static TARGET inline V NAME(splat)(T a)
{
    V v = {0};
    return v + a;
}

/* a * b + c, rounded once where the path has FMA (the build otherwise contracts nothing, so
 * that the scalar code rounds every product the same way in every sweep). The kernels use it
 * where an exact product and one rounding cost no accuracy, to do fewer operations per value.
 * The baseline path rounds twice: it agrees with the others closely, not bit for bit. */
static TARGET FASTLN_ALWAYS_INLINE V NAME(fma)(V a, V b, V c)
{
#if FASTLN_X86_DISPATCH && FASTLN_VECTOR_EXT && REGISTER_BYTES == 64
    if (sizeof(T) == sizeof(float))
        return (V)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
    return (V)_mm512_fmadd_pd((__m512d)a, (__m512d)b, (__m512d)c);
#elif FASTLN_X86_DISPATCH && FASTLN_VECTOR_EXT && REGISTER_BYTES == 32
    if (sizeof(T) == sizeof(float))
        return (V)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
    return (V)_mm256_fmadd_pd((__m256d)a, (__m256d)b, (__m256d)c);
#else
    return a * b + c;
#endif
}

/* The same for one value, rounded as NAME(fma) rounds each lane: the columns a row's vectors
 * do not cover must come out as they would in a vector. */
static TARGET FASTLN_ALWAYS_INLINE T NAME(fma1)(T a, T b, T c)
{
#if FASTLN_X86_DISPATCH && FASTLN_VECTOR_EXT && REGISTER_BYTES >= 32
    return sizeof(T) == sizeof(float) ? (T)__builtin_fmaf((float)a, (float)b, (float)c)
                                      : (T)__builtin_fma((double)a, (double)b, (double)c);
#else
    return a * b + c;
#endif
}

/* Per-lane double accumulators are updated a half vector at a time, each half converted as one
 * vector (HALF of T to WIDE of double): written as a loop over lanes, GCC converts one by one. */
#if FASTLN_VECTOR_EXT
typedef T NAME(half) __attribute__((vector_size(REGISTER_BYTES / 2), aligned(sizeof(T))));
typedef double NAME(wide) __attribute__((vector_size(REGISTER_BYTES / 2 * sizeof(double) /
                                                     sizeof(T)),
                                         aligned(sizeof(double)), may_alias));
#define HALF NAME(half)
#define WIDE NAME(wide)
#endif

#if FASTLN_VECTOR_EXT
/* v as two vectors of double, lanes [0, W/2) in out[0] and [W/2, W) in out[1]. GCC splits the
 * generic conversion of 8 floats to 8 doubles into four 128-bit ones and shuffles: on Zen 5 that
 * made the forward's statistics sweep 1.1x as slow. Of 4 floats to 4 doubles (AVX2) it makes two
 * conversions of 2, the upper pair through the stack: Zen 3, one thread, cached float32 and
 * float16 rows of 768 and 1024, the forward and the backward took 1.04-1.09x the time. */
static TARGET FASTLN_ALWAYS_INLINE void NAME(widen)(V v, WIDE out[2])
{
#if FASTLN_X86_DISPATCH && (REGISTER_BYTES == 64 || REGISTER_BYTES == 32)
    if (sizeof(T) == sizeof(float)) {
#if REGISTER_BYTES == 64
        const __m512 f = (__m512)v;
        const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(f)),
                      hi = _mm512_cvtps_pd(_mm512_extractf32x8_ps(f, 1));
#else
        const __m256 f = (__m256)v;
        const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(f)),
                      hi = _mm256_cvtps_pd(_mm256_extractf128_ps(f, 1));
#endif
        memcpy(&out[0], &lo, sizeof lo);
        memcpy(&out[1], &hi, sizeof hi);
        return;
    }
#endif
    HALF halves[2];
    memcpy(halves, &v, sizeof v);
    out[0] = __builtin_convertvector(halves[0], WIDE);
    out[1] = __builtin_convertvector(halves[1], WIDE);
}
#endif

/* acc[0:W] += v, in double. */
static TARGET inline void NAME(accumulate)(double *restrict acc, V v)
{
#if FASTLN_VECTOR_EXT
    WIDE wide[2];
    NAME(widen)(v, wide);
    WIDE *dst = (WIDE *)acc;
    dst[0] += wide[0];
    dst[1] += wide[1];
#else
    acc[0] += (double)v;
#endif
}

/* W per-lane double sums of one row, held in registers: lanes [0, W/2) in h[0], [W/2, W) in
 * h[1], and summed over lanes there too. As double[W] summed in a loop over lanes, GCC kept
 * them in memory and the loop's loads waited for the wider stores before them: Zen 5, one
 * thread, cached rows of 768 values, the forward took 1.1x the time in float32 and float16,
 * RMSNorm's 1.2x. */
#if FASTLN_VECTOR_EXT
typedef struct {
    WIDE h[2];
} NAME(lanes);
/* A WIDE taken apart into halves, quarters, ... in registers (GCC keeps a union of vectors
 * out of memory). It is 64 bytes whatever WIDE's size: the branches below for a wider
 * WIDE are compiled but never taken. */
typedef double NAME(dv4) __attribute__((vector_size(32), aligned(8)));
typedef double NAME(dv2) __attribute__((vector_size(16), aligned(8)));
typedef union {
    WIDE w;
    NAME(dv4) q[2];
    NAME(dv2) p[4];
    double d[8];
} NAME(wsplit);
#define LANES_OF_WIDE ((int)(sizeof(WIDE) / sizeof(double)))
#else
typedef struct {
    double h[1];
} NAME(lanes);
#endif
#define LANES NAME(lanes)

static TARGET FASTLN_ALWAYS_INLINE LANES NAME(lanes_zero)(void)
{
    LANES a;
#if FASTLN_VECTOR_EXT
    a.h[0] = a.h[1] = (WIDE){0};
#else
    a.h[0] = 0.0;
#endif
    return a;
}

static TARGET FASTLN_ALWAYS_INLINE void NAME(lanes_add)(LANES *a, V v)
{
    NAME(accumulate)((double *)a->h, v);
}

/* Pairwise combination of the lanes, lane l with lane l + width for width = W / 2, ..., 1, by
 * COMBINE(a, b, qa, qb, scale) on vectors of the lower and upper lanes, scale doubling at each
 * step: *out = lane 0 of a, *qout = of qa. */
#if FASTLN_VECTOR_EXT
#define FASTLN_LANES_REDUCE(A, QA, SCALE, COMBINE, OUT, QOUT)                                 \
    do {                                                                                      \
        NAME(wsplit) u_, uq_;                                                                 \
        u_.w = (A).h[0];                                                                      \
        uq_.w = (QA).h[0];                                                                    \
        COMBINE(u_.w, (A).h[1], uq_.w, (QA).h[1], SCALE);                                     \
        if (LANES_OF_WIDE == 8)                                                               \
            COMBINE(u_.q[0], u_.q[1], uq_.q[0], uq_.q[1], SCALE);                             \
        if (LANES_OF_WIDE >= 4)                                                               \
            COMBINE(u_.p[0], u_.p[1], uq_.p[0], uq_.p[1], SCALE);                             \
        if (LANES_OF_WIDE >= 2)                                                               \
            COMBINE(u_.d[0], u_.d[1], uq_.d[0], uq_.d[1], SCALE);                             \
        *(OUT) = u_.d[0];                                                                     \
        *(QOUT) = uq_.d[0];                                                                   \
    } while (0)
#else
#define FASTLN_LANES_REDUCE(A, QA, SCALE, COMBINE, OUT, QOUT)                                 \
    do {                                                                                      \
        (void)(SCALE);                                                                        \
        *(OUT) = (A).h[0];                                                                    \
        *(QOUT) = (QA).h[0];                                                                  \
    } while (0)
#endif

/* a += b (qa unused). */
#define FASTLN_SUM_STEP(a, b, qa, qb, scale) ((a) += (b))

/* The sum of the W lanes, in the order of the steps above. */
static TARGET FASTLN_ALWAYS_INLINE double NAME(lanes_total)(LANES a)
{
    double total, unused;
    FASTLN_LANES_REDUCE(a, a, 0, FASTLN_SUM_STEP, &total, &unused);
    return total;
}

/* Chan's merge of a block (per-lane mean bm and M2 q) into the lanes' running mean and m2:
 * mean += delta * wb, m2 += q + delta^2 * wab, delta = bm - mean, all in double. */
static TARGET FASTLN_ALWAYS_INLINE void NAME(chan_merge)(LANES *restrict mean,
                                                        LANES *restrict m2, V bm, V q,
                                                        double wb, double wab)
{
#if FASTLN_VECTOR_EXT
    WIDE hb[2], hq[2];
    NAME(widen)(bm, hb);
    NAME(widen)(q, hq);
    for (int h = 0; h < 2; h++) {
        const WIDE delta = hb[h] - mean->h[h];
        mean->h[h] += delta * wb;
        m2->h[h] += hq[h] + delta * delta * wab;
    }
#else
    const double delta = (double)bm - mean->h[0];
    mean->h[0] += delta * wb;
    m2->h[0] += (double)q + delta * delta * wab;
#endif
}

/* From each lane's sums ls = sum(s - pv) and lq = sum((s - pv)^2) over its count = 1 / inv
 * values: its mean about x0, pv - x0 + ls / count, and its M2, lq - ls^2 / count, in double. */
static TARGET FASTLN_ALWAYS_INLINE void NAME(lanes_moments)(LANES ls, LANES lq, V pv, double x0,
                                                           double inv, LANES *restrict mean,
                                                           LANES *restrict m2)
{
#if FASTLN_VECTOR_EXT
    WIDE hp[2];
    NAME(widen)(pv, hp);
    for (int h = 0; h < 2; h++) {
        const WIDE c = ls.h[h] * inv;
        mean->h[h] = (hp[h] - x0) + c;
        m2->h[h] = lq.h[h] - ls.h[h] * c;
    }
#else
    const double c = ls.h[0] * inv;
    mean->h[0] = ((double)pv - x0) + c;
    m2->h[0] = lq.h[0] - ls.h[0] * c;
#endif
}

/* Element i of the row being normalized: x[i], or with the fused residual add (has_r, data of
 * type T only) x[i] + r[i] rounded to T. Every sweep forms the sum again the same way, so all of
 * them see the same s. */
static TARGET FASTLN_ALWAYS_INLINE V NAME(vat)(const D *x, const D *r, const int has_r,
                                               Py_ssize_t i)
{
    if (has_r)
        return NAME(lds)(x + i) + NAME(lds)(r + i);
    return NAME(lds)(x + i);
}

static TARGET FASTLN_ALWAYS_INLINE T NAME(at)(const D *x, const D *r, const int has_r,
                                              Py_ssize_t i)
{
    return has_r ? (T)(NAME(ld1)(x + i) + NAME(ld1)(r + i)) : NAME(ld1)(x + i);
}

/* vat, and for 16-bit data with a scratch row sc (NULL: none) the value stored to sc[i] too,
 * for the output sweep to read in T (see fwd_rows). */
static TARGET FASTLN_ALWAYS_INLINE V NAME(vat_sc)(const D *x, const D *r, const int has_r,
                                                  Py_ssize_t i, T *restrict sc)
{
    const V v = NAME(vat)(x, r, has_r, i);
    if (sizeof(D) != sizeof(T) && sc != NULL)
        NAME(store)(sc + i, v);
    return v;
}

/* Welford's update of (count, *mu, *q) with s[from:n] - pivot, one value at a time, in double. */
static TARGET FASTLN_ALWAYS_INLINE void
NAME(welford)(const D *x, const D *r, const int has_r, Py_ssize_t from, Py_ssize_t n,
              double pivot, double *restrict mu, double *restrict q)
{
    double m = *mu, s = *q;
    for (Py_ssize_t i = from; i < n; i++) {
        const double d = (double)NAME(at)(x, r, has_r, i) - pivot;
        const double delta = d - m;
        m += delta / (double)(i + 1);
        s += delta * (d - m);
    }
    *mu = m;
    *q = s;
}

/* The per-lane mean *bm and M2 *q of the `len` vectors of s - pivot from element p on, in T: a
 * two-pass over values held in registers where the path has 32 of them (AVX-512), else read
 * again from the cache (16 registers cannot hold a block; spilling it is slower). len is BLOCK,
 * a constant, in the main loop. */
#define FASTLN_HOLD_BLOCK (REGISTER_BYTES >= 64)
static TARGET FASTLN_ALWAYS_INLINE V NAME(block_value)(const D *x, const D *r, const int has_r,
                                                       Py_ssize_t p, int k, V pv, const V *d)
{
    if (FASTLN_HOLD_BLOCK)
        return d[k];
    return NAME(vat)(x, r, has_r, p + k * W) - pv;
}

static TARGET FASTLN_ALWAYS_INLINE void
NAME(block_moments)(const D *x, const D *r, const int has_r, Py_ssize_t p, int len, V pv,
                    V *restrict bm, V *restrict q)
{
    V d[BLOCK], s0 = NAME(splat)(0), s1 = s0, q0 = s0, q1 = s0;
    for (int k = 0; k < len; k++) {
        const V dk = NAME(vat)(x, r, has_r, p + k * W) - pv;
        if (FASTLN_HOLD_BLOCK)
            d[k] = dk;
        if (k % 2)
            s1 += dk;
        else
            s0 += dk;
    }
    const V m = (s0 + s1) * (T)(1.0 / len);
    for (int k = 0; k < len; k++) {
        const V e = NAME(block_value)(x, r, has_r, p, k, pv, d) - m;
        if (k % 2)
            q1 = NAME(fma)(e, e, q1);
        else
            q0 = NAME(fma)(e, e, q0);
    }
    *bm = m;
    *q = q0 + q1;
}
#undef FASTLN_HOLD_BLOCK

/* sum(s - pv) and sum((s - pv)^2) over the `len` vectors of s from element p on, per lane, in T,
 * in one pass (four chains of each), s stored to sc too (see vat_sc). len is BLOCK, a constant,
 * in the main loop. */
static TARGET FASTLN_ALWAYS_INLINE void
NAME(block_sums)(const D *x, const D *r, const int has_r, Py_ssize_t p, int len, V pv,
                 T *restrict sc, V *restrict sum, V *restrict sq)
{
    V s0 = NAME(splat)(0), s1 = s0, s2 = s0, s3 = s0, q0 = s0, q1 = s0, q2 = s0, q3 = s0;
    int k = 0;
    for (; k + 4 <= len; k += 4) {
        const V e0 = NAME(vat_sc)(x, r, has_r, p + k * W, sc) - pv,
                e1 = NAME(vat_sc)(x, r, has_r, p + (k + 1) * W, sc) - pv,
                e2 = NAME(vat_sc)(x, r, has_r, p + (k + 2) * W, sc) - pv,
                e3 = NAME(vat_sc)(x, r, has_r, p + (k + 3) * W, sc) - pv;
        s0 += e0;
        s1 += e1;
        s2 += e2;
        s3 += e3;
        q0 = NAME(fma)(e0, e0, q0);
        q1 = NAME(fma)(e1, e1, q1);
        q2 = NAME(fma)(e2, e2, q2);
        q3 = NAME(fma)(e3, e3, q3);
    }
    for (; k < len; k++) {
        const V e = NAME(vat_sc)(x, r, has_r, p + k * W, sc) - pv;
        s0 += e;
        q0 = NAME(fma)(e, e, q0);
    }
    *sum = (s0 + s1) + (s2 + s3);
    *sq = (q0 + q1) + (q2 + q3);
}

/* Prefetches, for the block of BLOCK vectors at element i of a sweep over x (and r with has_r),
 * the bytes `ahead` bytes past element i >> shift, as many as the block has >> shift. shift 0:
 * long rows run that far in front of the hardware prefetcher, into the next row at its end (a
 * prefetch past the data does nothing). shift 1: the forward's statistics sweep over a short
 * row fetches the first half of a row further on (see fwd_rows). */
static TARGET FASTLN_ALWAYS_INLINE void NAME(fetch_block)(const D *x, const D *r,
                                                          const int has_r, Py_ssize_t i,
                                                          Py_ssize_t ahead, const int shift)
{
    const char *px = (const char *)(x + (i >> shift)) + ahead,
               *pr = has_r ? (const char *)(r + (i >> shift)) + ahead : NULL;
    for (Py_ssize_t k = 0; k < (BLOCK * W * (Py_ssize_t)sizeof(D)) >> shift; k += 64) {
        __builtin_prefetch(px + k);
        if (has_r)
            __builtin_prefetch(pr + k);
    }
}

/* Chan's merge of two sets of lanes with equal counts, half_count values each:
 * mean = (a + b) / 2, M2 = M2_a + M2_b + delta^2 half_count / 2; half_count then doubles. */
#define FASTLN_CHAN_STEP(a, b, qa, qb, half_count)                                            \
    do {                                                                                      \
        const __typeof__(a) delta_ = (b) - (a);                                               \
        (a) = 0.5 * ((a) + (b));                                                              \
        (qa) = ((qa) + (qb)) + delta_ * delta_ * (0.5 * (half_count));                       \
        (half_count) *= 2.0;                                                                  \
    } while (0)

/* A row of fwd_rows' output sweep, which on cached data runs in pieces between the blocks of
 * the next row's statistics sweep (see fwd_rows). Passed by value, with a flag where there may
 * be none: through a pointer, GCC read its fields from memory at every vector (a store to y
 * might have changed them), and the forward took 1.9x the time. */
typedef struct {
    const D *xr, *rr;
    D *yr, *sr;
    const T *w, *b;
    const T *sc;        /* the row's vectors in T (16-bit data; NULL: read xr) */
    V pv, muv, rsv;
    T pivot, mu, rs;    /* pv, muv and rsv as one value */
    Py_ssize_t head, n; /* the first column of the vector sweep; the row's length */
} NAME(outrow);

/* Columns i to i + W of o's row: y, and with the fused residual add the sum; `only`
 * FASTLN_FWD_Y or FASTLN_FWD_SUM writes that one alone (see fwd_rows), 0 both. wv and bv are
 * the weight and bias there (bv unused by RMSNorm), loaded by the caller: a sweep over two
 * rows loads them once for both. */
#define FASTLN_FWD_Y 1
#define FASTLN_FWD_SUM 2
/* y of the vector si of o's row, given the weight and bias there (bv unused by RMSNorm). */
static TARGET FASTLN_ALWAYS_INLINE V NAME(norm_vec)(const NAME(outrow) o, const V si,
                                                   const V wv, const V bv, const int rms)
{
    const V scaled = o.rsv * wv;
    if (rms)
        return si * scaled;
    return NAME(fma)((si - o.pv) - o.muv, scaled, bv);
}

/* The vector of s at column i of o's row, for its output: from the row's scratch row where it
 * has one (16-bit data; `scratch` says that it has), else from x (and r). */
static TARGET FASTLN_ALWAYS_INLINE V NAME(out_s)(const NAME(outrow) o, Py_ssize_t i,
                                                const int fused, const int scratch)
{
    return sizeof(D) != sizeof(T) && (scratch || o.sc != NULL)
               ? NAME(load)(o.sc + i)
               : NAME(vat)(o.xr, o.rr, fused, i);
}

static TARGET FASTLN_ALWAYS_INLINE void NAME(fwd_vec_wb)(const NAME(outrow) o, Py_ssize_t i,
                                                         const V wv, const V bv,
                                                         const int fused, const int rms,
                                                         const int stream,
                                                         const int stream_sum, const int only)
{
    const V si = NAME(out_s)(o, i, fused, 0);
    if (only != FASTLN_FWD_SUM) {
        const V out = NAME(norm_vec)(o, si, wv, bv, rms);
        if (stream)
            NAME(streams)(o.yr + i, out);
        else
            NAME(sts)(o.yr + i, out);
    }
    if (fused && stream_sum && only != FASTLN_FWD_Y)
        NAME(streams)(o.sr + i, si);
    else if (fused && only != FASTLN_FWD_Y)
        NAME(sts)(o.sr + i, si);
}

/* fwd_vec_wb with the weight and bias loaded for o's row alone. */
static TARGET FASTLN_ALWAYS_INLINE void NAME(fwd_vec)(const NAME(outrow) o, Py_ssize_t i,
                                                      const int fused, const int rms,
                                                      const int stream, const int stream_sum,
                                                      const int only)
{
    const V wv = NAME(load)(o.w + i), bv = rms ? wv : NAME(load)(o.b + i);
    NAME(fwd_vec_wb)(o, i, wv, bv, fused, rms, stream, stream_sum, only);
}

/* y of the vector at column i of o's row, where the row has no fused sum to store (16-bit
 * data), s read as out_s reads it. */
static TARGET FASTLN_ALWAYS_INLINE V NAME(row_y)(const NAME(outrow) o, Py_ssize_t i,
                                                const int rms, const int scratch)
{
    const V wv = NAME(load)(o.w + i);
    return NAME(norm_vec)(o, NAME(out_s)(o, i, 0, scratch), wv,
                          rms ? wv : NAME(load)(o.b + i), rms);
}

/* The vectors of o's row from column i on, up to column `end`, with plain stores (`scratch` as
 * for out_s); returns the first column left. Two at a time where one instruction rounds both
 * (sts2, bfloat16 data, which has no fused sum): Zen 4, one thread, C harness, cached bfloat16
 * 64 x 1024 (from the scratch row): LayerNorm 0.95-0.97x the time, RMSNorm 0.85-0.88x, rows of
 * 768 0.97x; from the row, 64 x 2048 0.9x and 0.86x, 64 x 256 0.92x, 256 x 4096 RMSNorm 0.97x,
 * 8 x 4096 1.0x; from memory, 1024 x 8192 and 16384 x 1024 (written in pieces) 0.99-1.01x. */
static TARGET FASTLN_ALWAYS_INLINE Py_ssize_t NAME(fwd_plain)(const NAME(outrow) o,
                                                              Py_ssize_t i, Py_ssize_t end,
                                                              const int fused, const int rms,
                                                              const int scratch)
{
    if (FASTLN_STS2 && !fused)
        for (; i + 2 * W <= end; i += 2 * W)
            NAME(sts2)(o.yr + i, NAME(row_y)(o, i, rms, scratch),
                       NAME(row_y)(o, i + W, rms, scratch));
    for (; i + W <= end; i += W)
        NAME(fwd_vec)(o, i, fused, rms, 0, 0, 0);
    return i;
}

/* Vectors k0 to k1 of o's vector sweep, those that the row holds, with plain stores. */
static TARGET FASTLN_ALWAYS_INLINE void NAME(fwd_span)(const NAME(outrow) o, Py_ssize_t k0,
                                                       Py_ssize_t k1, const int fused,
                                                       const int rms)
{
    const Py_ssize_t end = o.head + k1 * W;
    NAME(fwd_plain)(o, o.head + k0 * W, end < o.n ? end : o.n, fused, rms, 0);
}

/* The moments of the vector part of one row s (x, or x + r; its first nvec * W elements) about
 * the row's pivot: *mu = mean(s - pivot), *m2 = sum((s - mean(s))^2), in two passes per block
 * (see row_moments for when). `ahead` and `shift` as for fetch_block; with pend, the vectors of
 * `pending` are written along the way, as in row_moments.
 *
 * Lane l of the W lanes sees elements l, l + W, l + 2W, ... The row is read in blocks of BLOCK
 * vectors (the last may be shorter). A block's per-lane mean and M2 (block_moments, in T) are
 * merged into the lane's running (count, mean, M2) in double with Chan's formula, which is
 * Welford's update taken a block at a time; then the lanes pairwise (Chan). */
static TARGET FASTLN_ALWAYS_INLINE void
NAME(vector_moments_blocks)(const D *x, const D *r, const int has_r, Py_ssize_t nvec, T pivot,
                            Py_ssize_t ahead, const int shift, const NAME(outrow) pending,
                            const int pend, double *restrict mu, double *restrict m2)
{
    LANES mean = NAME(lanes_zero)(), lm2 = mean;
    const V pv = NAME(splat)(pivot);
    Py_ssize_t done = 0;                           /* vectors merged = values per lane */
    while (done < nvec) {
        const int len = nvec - done < BLOCK ? (int)(nvec - done) : BLOCK;
        if (ahead)
            NAME(fetch_block)(x, r, has_r, done * W, ahead, shift);
        V bm, bq;
        if (len == BLOCK)
            NAME(block_moments)(x, r, has_r, done * W, BLOCK, pv, &bm, &bq);
        else
            NAME(block_moments)(x, r, has_r, done * W, len, pv, &bm, &bq);
        /* Chan: n = n_a + n_b, mean += delta n_b / n, M2 += M2_b + delta^2 n_a n_b / n */
        const double na = (double)done, nb = (double)len;
        NAME(chan_merge)(&mean, &lm2, bm, bq, nb / (na + nb), na * nb / (na + nb));
        if (pend)
            NAME(fwd_span)(pending, done, done + len, has_r, 0);
        done += len;
    }
    /* Lanes have equal counts. */
    double half_count = (double)nvec;
    FASTLN_LANES_REDUCE(mean, lm2, half_count, FASTLN_CHAN_STEP, mu, m2);
}

/* vector_moments_blocks for row_moments' rows measured again, out of line: they are rare. */
static TARGET FASTLN_NOINLINE void NAME(vector_moments_again)(const D *x, const D *r,
                                                              const int has_r, Py_ssize_t nvec,
                                                              T pivot, double *restrict mu,
                                                              double *restrict m2)
{
    const NAME(outrow) idle = {0};
    NAME(vector_moments_blocks)(x, r, has_r, nvec, pivot, 0, 0, idle, 0, mu, m2);
}

/* Moments of one row s (x, or x + r) about its pivot: *mean = mean(s - pivot),
 * *m2 = sum((s - mean(s))^2).
 *
 * Lane l of the W lanes sees elements l, l + W, l + 2W, ... and is centred on a pivot of its own,
 * the mean of its first four values (fewer in rows of fewer vectors). The sums of s - pv and of
 * its squares are formed in T over blocks of BLOCK vectors (block_sums), added per lane in
 * double, and turned into each lane's mean and M2 (lanes_moments); then the lanes are combined
 * pairwise (Chan) and the tail elements one by one (Welford). The order of every operation
 * depends only on n, never on threads.
 *
 * One pass is enough where the pivots are near their lanes' means: M2 = sum((s - pv)^2) -
 * count * (mean - pv)^2 then loses little to the subtraction. On rows whose values vary
 * randomly, whatever their offset, the sum of the squares over all lanes is about 1.25 M2; a
 * row where it exceeds 2 M2 (a pivot on an outlier, a row whose first values sit apart from
 * the rest), which one pass could leave a few parts in a million off in float32, is measured
 * again by vector_moments_blocks, which centres each block on its own mean. Zen 5, one thread,
 * against two passes for every row: the forward took 0.82x the time in float16 (rows of 768
 * and 4096), 0.88x in bfloat16, 0.9-0.95x in float32 and float64. The residual add from
 * memory (ahead) keeps the two passes: with one, it took 1.03-1.06x the time (float32 and
 * float64 rows of 768; 1.05x from Python, float64, two threads). The one pass stores the
 * vectors of s to sc (NULL: none; 16-bit data, which never takes the two-pass route first). */
static TARGET FASTLN_ALWAYS_INLINE void
NAME(row_moments)(const D *x, const D *r, const int has_r, Py_ssize_t n, T pivot,
                  Py_ssize_t ahead, const int shift, const NAME(outrow) pending, const int pend,
                  T *restrict sc, double *restrict mean_out, double *restrict m2_out)
{
    const Py_ssize_t nvec = n / W;
    double mu = 0.0, q = 0.0;
    if (nvec > 0 && has_r && ahead) {
        NAME(vector_moments_blocks)(x, r, has_r, nvec, pivot, ahead, shift, pending, pend, &mu,
                                    &q);
    } else if (nvec > 0) {
        const int first = nvec < 4 ? (int)nvec : 4;
        V pv = NAME(vat)(x, r, has_r, 0);
        for (int k = 1; k < first; k++)
            pv += NAME(vat)(x, r, has_r, k * W);
        pv *= (T)(1.0 / first);
        LANES ls = NAME(lanes_zero)(), lq = ls;
        Py_ssize_t done = 0;
        while (done < nvec) {
            const int len = nvec - done < BLOCK ? (int)(nvec - done) : BLOCK;
            if (ahead)
                NAME(fetch_block)(x, r, has_r, done * W, ahead, shift);
            V bs, bq;
            if (len == BLOCK)
                NAME(block_sums)(x, r, has_r, done * W, BLOCK, pv, sc, &bs, &bq);
            else
                NAME(block_sums)(x, r, has_r, done * W, len, pv, sc, &bs, &bq);
            NAME(lanes_add)(&ls, bs);
            NAME(lanes_add)(&lq, bq);
            if (pend)
                NAME(fwd_span)(pending, done, done + len, has_r, 0);
            done += len;
        }
        LANES mean, m2;
        NAME(lanes_moments)(ls, lq, pv, (double)pivot, 1.0 / (double)nvec, &mean, &m2);
        /* Lanes have equal counts. */
        double half_count = (double)nvec;
        FASTLN_LANES_REDUCE(mean, m2, half_count, FASTLN_CHAN_STEP, &mu, &q);
        if (!(NAME(lanes_total)(lq) <= 2.0 * q))   /* also NaN */
            NAME(vector_moments_again)(x, r, has_r, nvec, pivot, &mu, &q);
    }
    NAME(welford)(x, r, has_r, nvec * W, n, (double)pivot, &mu, &q);
    /* Short sums in float over- or underflow on rows whose spread is beyond ~2^+-50 (values near
     * FLT_MAX, subnormal spreads): such rows, and NaN or constant ones, are redone in double. */
    if (sizeof(T) < sizeof(double) && !(q > 0x1p-100 && q < 0x1p100)) {
        mu = 0.0;
        q = 0.0;
        NAME(welford)(x, r, has_r, 0, n, (double)pivot, &mu, &q);
    }
    *mean_out = mu;
    *m2_out = q;
}

/* 1 / sqrt(mean(d^2) + eps) for d = (s - pivot) - mu over one row s (x, or x + r), in double,
 * each d divided by the row's largest |d| (scale) before it is squared, so that no square over-
 * or underflows: for rows whose plain sum of squares left T's comfortable range. A row whose
 * d reach infinity or NaN gives 1 / sqrt(scale^2 + eps) (0 or NaN). */
static TARGET double NAME(scaled_rstd)(const D *x, const D *r, const int has_r, Py_ssize_t n,
                                       double pivot, double mu, double eps)
{
    double scale = 0.0;
    for (Py_ssize_t i = 0; i < n; i++) {
        const double e = fabs(((double)NAME(at)(x, r, has_r, i) - pivot) - mu);
        scale = e > scale || e != e ? e : scale;
    }
    if (!(scale > 0.0) || scale > DBL_MAX)       /* constant, NaN or inf rows */
        return 1.0 / sqrt(scale * scale + eps);
    /* Summed with Neumaier's compensation: a row whose largest term (1) comes among many
     * small ones would otherwise lose digits to each addition (a float64 row of 13225 values,
     * one of them not 0, had its rstd off by 7e-13). */
    double u = 0.0, lost = 0.0;
    for (Py_ssize_t i = 0; i < n; i++) {
        const double e = (((double)NAME(at)(x, r, has_r, i) - pivot) - mu) / scale;
        const double sq = e * e, t = u + sq;
        lost += u >= sq ? (u - t) + sq : (sq - t) + u;
        u = t;
    }
    u = (u + lost) / (double)n;                    /* in [1/n, 1] */
    if (eps == 0.0)
        return 1.0 / (scale * sqrt(u));
    if (scale >= 1.0)
        return 1.0 / (scale * sqrt(u + eps / scale / scale));
    return 1.0 / sqrt(scale * scale * u + eps);
}

/* 1 / sqrt(mean(s^2) + eps) of one row s (x, or x + r), for RMSNorm. Squares are summed in T in
 * blocks of BLOCK vectors (four chains; one waited on the latency of its adds: Zen 3, two
 * threads, C harness, float32 512 x 1024 and 2048 x 768 0.84-0.88x the time, 64 x 1024 0.79x,
 * float16 0.9x, from memory the same), then per lane, over lanes and over the tail in double.
 * A row whose sum leaves T's comfortable range (values beyond ~2^+-50 in float32, ~2^+-500 in
 * float64) is summed again in double, scaled by its largest magnitude so that nothing
 * overflows. The vectors of s are stored to sc too (see vat_sc). */
static TARGET FASTLN_ALWAYS_INLINE double
NAME(row_rstd_rms)(const D *x, const D *r, const int has_r, Py_ssize_t n, double eps,
                   Py_ssize_t ahead, const int shift, const NAME(outrow) pending, const int pend,
                   T *restrict sc)
{
    const Py_ssize_t nvec = n / W;
    LANES lanes = NAME(lanes_zero)();
    const V zero = NAME(splat)(0);
    Py_ssize_t v = 0;
    while (v < nvec) {
        const int len = nvec - v < BLOCK ? (int)(nvec - v) : BLOCK;
        if (ahead)
            NAME(fetch_block)(x, r, has_r, v * W, ahead, shift);
        V sq0 = zero, sq1 = zero, sq2 = zero, sq3 = zero;
        int k = 0;
        for (; k + 4 <= len; k += 4, v += 4) {
            const V e0 = NAME(vat_sc)(x, r, has_r, v * W, sc),
                    e1 = NAME(vat_sc)(x, r, has_r, (v + 1) * W, sc),
                    e2 = NAME(vat_sc)(x, r, has_r, (v + 2) * W, sc),
                    e3 = NAME(vat_sc)(x, r, has_r, (v + 3) * W, sc);
            sq0 += e0 * e0;
            sq1 += e1 * e1;
            sq2 += e2 * e2;
            sq3 += e3 * e3;
        }
        for (; k < len; k++, v++) {
            const V e = NAME(vat_sc)(x, r, has_r, v * W, sc);
            sq0 += e * e;
        }
        NAME(lanes_add)(&lanes, (sq0 + sq1) + (sq2 + sq3));
        if (pend)
            NAME(fwd_span)(pending, v - len, v, has_r, 1);
    }
    double q = NAME(lanes_total)(lanes);
    for (Py_ssize_t i = nvec * W; i < n; i++) {
        const double e = (double)NAME(at)(x, r, has_r, i);
        q += e * e;
    }
    const double limit = sizeof(T) < sizeof(double) ? 0x1p100 : 0x1p1000;
    if (q > 1.0 / limit && q < limit)
        return 1.0 / sqrt(q / (double)n + eps);
    return NAME(scaled_rstd)(x, r, has_r, n, 0.0, 0.0, eps);
}

/* Column i of o's row (see fwd_vec_wb), in T. */
static TARGET FASTLN_ALWAYS_INLINE void NAME(fwd_one)(const NAME(outrow) o, Py_ssize_t i,
                                                      const int fused, const int rms)
{
    const T si = NAME(at)(o.xr, o.rr, fused, i), scaled = o.rs * o.w[i];
    NAME(st1)(o.yr + i, rms ? si * scaled : NAME(fma1)((si - o.pivot) - o.mu, scaled, o.b[i]));
    if (fused)
        NAME(st1)(o.sr + i, si);
}

/* A row's statistics, as fwd_rows' output sweep needs them: s - pivot has mean mu and
 * spread sqrt(M2); rs = 1 / sqrt(M2 / n + eps) (RMSNorm: pivot and mu 0, spread 1). */
typedef struct {
    double mu, rs, spread;
    T pivot;
} NAME(rowstat);

/* fwd_rows' output sweep over row `row`, whose statistics are st (see fwd_rows); *in_double is
 * set where the row is finished in double instead. */
static TARGET FASTLN_ALWAYS_INLINE NAME(outrow)
NAME(out_row)(const D *x, const D *r, D *sum, D *y, const T *w, const T *b, Py_ssize_t row,
              Py_ssize_t n, const NAME(rowstat) st, const int stream, const int has_r,
              const int fused, const T *sc, int *restrict in_double)
{
    const D *xr = has_r && !fused ? sum + row * n : x + row * n,
            *rr = fused ? r + row * n : NULL;
    D *yr = y + row * n, *sr = has_r ? sum + row * n : NULL;
    /* sqrt(m2) bounds every |x - mean|. When it or rstd is far outside float32's comfortable
     * range (values near FLT_MAX, subnormal spreads, eps = 0 on a near-constant row), the row
     * is finished in double so that nothing overflows or loses digits; otherwise in T. */
    *in_double = sizeof(T) < sizeof(double) && !(st.spread < 0x1p100 && st.spread > 0x1p-100 &&
                                                 st.rs < 0x1p100 && st.rs > 0x1p-100);
    /* The vector sweep starts where y is aligned to the vector it stores (a register of T,
     * half one of 16-bit data), the columns before one at a time. Streaming stores need it,
     * and x placed alike (fastln's fresh outputs sit at the offset of x) is then aligned
     * too. 16-bit rows that do not stream start at 0 (see norm_bwd). The columns before, and
     * those after the last whole vector, written as whole vectors at columns 0 and n - W over
     * columns that the sweep writes too (where nothing is in place) took 0.99x the time of one
     * value at a time (Zen 4, one thread, C harness, cached float32 512 x 1024 16 bytes off a
     * 64-byte boundary, where the columns cost 1.06x). */
    const Py_ssize_t head = sizeof(D) != sizeof(T) && !stream ? 0 : (Py_ssize_t)(
        ((W * sizeof(D) - (uintptr_t)yr % (W * sizeof(D))) % (W * sizeof(D))) / sizeof(D));
    /* (s - pivot) is exact; subtracting the small remainder mu rounds once. */
    const T mu_t = (T)st.mu, rs_t = (T)st.rs;
    const NAME(outrow) o = {xr, rr, yr, sr, w, b, sc, NAME(splat)(st.pivot), NAME(splat)(mu_t),
                            NAME(splat)(rs_t), st.pivot, mu_t, rs_t, head, n};
    return o;
}

/* The statistics sweep of fwd_rows over row `row` (see there); writes mean[row] and rstd[row]
 * where they are not NULL. 16-bit data with the residual add first stores the row's sum. With
 * pend, the vector sweep of the row before (`pending`) is written along the way, the vectors
 * of each block after the block's statistics. sc (NULL: none) receives the row's vectors in T
 * (see fwd_rows). */
static TARGET FASTLN_ALWAYS_INLINE NAME(rowstat)
NAME(fwd_stats)(const D *x, const D *r, D *sum, T *restrict mean, T *restrict rstd,
                Py_ssize_t row, Py_ssize_t n, double eps, Py_ssize_t ahead, const int shift,
                const NAME(outrow) pending, const int pend, T *restrict sc, const int has_r,
                const int fused, const int rms)
{
    const D *xr = x + row * n, *rr = has_r ? r + row * n : NULL;
    if (has_r && !fused) {
        D *sr = sum + row * n;
        Py_ssize_t i = 0;
        /* Two vectors per rounding instruction where sts2 has one: Zen 4, one thread, C
         * harness, bfloat16 add + LayerNorm and add + RMSNorm, cached 64 x 1024 and 64 x 768,
         * 0.92x the time; 8192 x 768 from memory, fetched ahead (FASTLN_FETCH, as Python
         * asks for it), 0.94x (the same bits). */
        if (FASTLN_STS2)
            for (; i + 2 * W <= n; i += 2 * W)
                NAME(sts2)(sr + i, NAME(lds)(xr + i) + NAME(lds)(rr + i),
                           NAME(lds)(xr + i + W) + NAME(lds)(rr + i + W));
        for (; i + W <= n; i += W)
            NAME(sts)(sr + i, NAME(lds)(xr + i) + NAME(lds)(rr + i));
        for (; i < n; i++)
            NAME(st1)(sr + i, NAME(ld1)(xr + i) + NAME(ld1)(rr + i));
        xr = sr;
    }
    NAME(rowstat) st;
    st.pivot = rms ? (T)0 : NAME(at)(xr, rr, fused, 0);
    st.mu = 0.0;
    if (rms) {
        st.rs = NAME(row_rstd_rms)(xr, rr, fused, n, eps, ahead, shift, pending, pend, sc);
        st.spread = 1.0;
    } else {
        double m2;
        NAME(row_moments)(xr, rr, fused, n, st.pivot, ahead, shift, pending, pend, sc, &st.mu,
                          &m2);
        /* A float64 row whose squared deviations left double's range (a spread beyond
         * ~2^500, where m2 comes out inf or NaN, or below ~2^-500 where eps does not dwarf
         * it) is measured again, scaled (see scaled_rstd), if its mean is finite (rows with
         * inf or NaN give NaN as before). Deviations that overflow even so (finite values at
         * both ends of the range) give NaN rather than the bias, as if the row were constant.
         * float32 and 16-bit rows cannot leave the range. */
        if (sizeof(T) == sizeof(double) && st.mu - st.mu == 0.0 &&
            !(m2 < 0x1p1000 && (m2 > 0x1p-1000 || eps >= 0x1p-900))) {
            st.rs = NAME(scaled_rstd)(xr, rr, fused, n, (double)st.pivot, st.mu, eps);
            st.rs = st.rs > 0.0 ? st.rs : NAN;
        } else {
            st.rs = m2 > DBL_MAX ? NAN : 1.0 / sqrt(m2 / (double)n + eps);
        }
        st.spread = sqrt(m2);
        if (mean != NULL)
            mean[row] = (T)((double)st.pivot + st.mu);
    }
    if (rstd != NULL)
        rstd[row] = (T)st.rs;
    return st;
}

/* The vector sweep of fwd_rows over two cached rows o and o2 without the residual add, from
 * column i on: the weight and bias are loaded once for both. Returns the first column left.
 * w and b are not restrict, so that GCC keeps them in registers rather than load them again
 * for the second row; out of line, with a copy for each kind of norm: inlined into fwd_rows,
 * GCC kept one of the rows' constants on the stack and read it at every vector, and the
 * forward gained nothing.
 *
 * Both rows' x are loaded before either y is stored. In rows a multiple of 4 KiB long with y
 * at x's offset modulo 4 KiB (NumPy's large arrays all sit 16 bytes into a page, and fastln's
 * fresh outputs at their input's offset), the store to row o's y and the load of row o2's x
 * agree in the low 12 bits, the part of the address the CPU compares first, and the load
 * waited for the store. Zen 4, one thread, y at x's offset: float32 512 x 1024 took 0.88-0.96x
 * the time, 256 x 2048 0.92-0.93x, float64 512 x 512 0.74-1.16x (noisy), as long as with y 2 KiB
 * away; rows of 768 and y elsewhere the same. */
static TARGET FASTLN_ALWAYS_INLINE Py_ssize_t NAME(fwd_pair_cols)(const NAME(outrow) o,
                                                                  const NAME(outrow) o2,
                                                                  Py_ssize_t i, const T *w,
                                                                  const T *b, const int rms)
{
    for (; i + W <= o.n; i += W) {
        const V wv = NAME(load)(w + i), bv = rms ? wv : NAME(load)(b + i);
        const V s1 = NAME(lds)(o.xr + i), s2 = NAME(lds)(o2.xr + i);
        NAME(sts)(o.yr + i, NAME(norm_vec)(o, s1, wv, bv, rms));
        NAME(sts)(o2.yr + i, NAME(norm_vec)(o2, s2, wv, bv, rms));
    }
    return i;
}

static TARGET FASTLN_NOINLINE Py_ssize_t NAME(fwd_pair)(const NAME(outrow) o,
                                                        const NAME(outrow) o2, Py_ssize_t i,
                                                        const T *w, const T *b, const int rms)
{
    if (rms)
        return NAME(fwd_pair_cols)(o, o2, i, w, b, 1);
    return NAME(fwd_pair_cols)(o, o2, i, w, b, 0);
}

/* The vector sweep of o's row from column i on, read from its scratch row (see fwd_rows), with
 * plain stores; returns the first column left. Out of line, with a copy for each kind of norm:
 * inlined into fwd_rows, GCC (12, with Python's -fwrapv) kept the scratch row's pointer, the
 * weight's and the bias's on the stack and stored a vector there at every vector, and bfloat16
 * rows gained nothing from the scratch. */
static TARGET FASTLN_NOINLINE Py_ssize_t NAME(fwd_scratch_sweep)(const NAME(outrow) o,
                                                                 Py_ssize_t i, const int rms)
{
    if (rms)
        return NAME(fwd_plain)(o, i, o.n, 0, 1, 1);
    return NAME(fwd_plain)(o, i, o.n, 0, 0, 1);
}

/* Normalizes `rows` rows of s, where s is x or (has_r) x + r, which is then also written to
 * `sum`. LayerNorm: y = (s - mean) * rstd * w + b; RMSNorm (rms): y = s * rstd * w. mean (not for
 * RMSNorm) and rstd are written per row when rstd is not NULL. y and sum may each be x or r
 * itself (in place): a row is read in full before any of it is written. */
static TARGET FASTLN_ALWAYS_INLINE void
NAME(fwd_rows)(const D *x, const D *r, const T *restrict w, const T *restrict b, D *sum, D *y,
               T *restrict mean, T *restrict rstd, Py_ssize_t rows, Py_ssize_t n, double eps,
               int stream, int prefetch, const int pieces, const int scratch, const int has_r,
               const int rms)
{
    /* 16-bit data: the sum is rounded and stored first, then normalized as a plain row read
     * back from the cache (one conversion per value instead of one per value and sweep). Wider
     * data forms x + r afresh in every sweep and stores it with y. */
    const int fused = has_r && sizeof(D) == sizeof(T);
    /* Streamed y and sum of the fused add that sit within 256 bytes of each other modulo 4 KiB
     * (NumPy places arrays of a size alike) are written in two sweeps over each row, one for
     * each (x and r read again from the cache). In one sweep the CPU takes the two streams for
     * each other: Zen 3, float32 add + LayerNorm and add + RMSNorm, two threads, 8192 x 1024 at
     * the same address took 1.6x the time of y and the sum 2 KiB apart, 65536 x 1024 1.35-1.7x;
     * one thread, the sum 32 bytes ahead of y 3x, 64 ahead 1.5x, 128 ahead 1.1x. Two sweeps
     * took 0.8-0.95x the time of one there, but 1.1-1.3x where y and the sum lie apart (fastln's
     * fresh outputs do). The sweep that writes x or r (in place) comes second, so that nothing
     * it overwrites is read again; where both are written, one sweep must do. */
    const int y_in = y == x || y == r, sum_in = sum == x || sum == r;
    const uintptr_t apart = fused ? ((uintptr_t)sum - (uintptr_t)y) % 4096 : 0;
    const int split = fused && stream && !(y_in && sum_in) && (apart < 256 || apart > 3840);
    const int first = sum_in ? FASTLN_FWD_Y : FASTLN_FWD_SUM,
              second = sum_in ? FASTLN_FWD_SUM : FASTLN_FWD_Y;
    /* Short rows: the statistics of the next row are formed before this one is normalized, so
     * that the reduction over lanes, the square root and the division of one row overlap the
     * output sweep of the row before. Zen 5, one thread, cached: float16 and bfloat16 rows of
     * 768 and 1024 values, 0.86-0.92x the time (0.76x for RMSNorm at 512), float32 rows of 256,
     * 0.91x; float32 rows of 768 and more took 1.0-1.05x, so the rule is by bytes and by dtype. */
    const size_t row_bytes = (size_t)n * sizeof(D) * (has_r ? 2 : 1);
    const int early = row_bytes <= (sizeof(D) == sizeof(T) ? 2048 : 8192);
    /* prefetch (see norm_fwd): 1, short rows fetch the row `dist` rows past the one whose
     * statistics are formed (at least 6 KiB of row_bytes on, and past the row whose statistics
     * are formed early), the first half of it in the statistics sweep and the second half in the
     * output sweep, so that memory is busy in both. Against fetching the row two on whole in the
     * output sweep, Zen 5, two threads: float32 LayerNorm 0.86x the time on 4096 x 4096,
     * 0.86-0.94x on 65536 x 1024, 0.92x on 16384 x 2048; RMSNorm, the residual add, float16,
     * bfloat16 and float64 0.9-1.05x. A distance of 2 rows on 4096 x 4096 float32 took 1.06x the
     * time of 1, 1 row on 65536 x 1024 1.09x that of 2. 2, long rows fetch 4 KiB ahead of the
     * statistics sweep. With the residual add only the first, and only in float32 and float64:
     * 16-bit short rows and all long ones took 1.2-1.3x the time. */
    if (has_r && !(fused && prefetch == 1))
        prefetch = 0;
    const int ahead_row = early || pieces;      /* statistics formed a row ahead */
    const Py_ssize_t near = row_bytes ? (Py_ssize_t)(6143 / row_bytes) + 1 : 1,
                     dist = near > 1 + ahead_row ? near : 1 + ahead_row;
    const Py_ssize_t ahead = prefetch == 2   ? 4096
                             : prefetch == 1 ? dist * n * (Py_ssize_t)sizeof(D)
                                             : 0;
    /* pieces (see norm_fwd for which rows): the output sweep of a row runs in pieces, one after
     * each block of the next row's statistics sweep, so that the out-of-order core always has
     * independent loads and stores to run beside the statistics' dependent sums, and the row's
     * square root and division are done long before its output needs them. There is then no
     * output sweep of its own: the statistics sweep fetches the whole row `dist` rows on. */
    const int shift = prefetch == 1 && !pieces;
    /* pair: cached rows that are a whole number of vectors (so that all start at the same
     * offset from a vector boundary), without the residual add, are normalized two at a time,
     * the statistics of both formed first, then one output sweep over both that loads each
     * vector of the weight and bias once: the sweep over one row loads three vectors (x, w, b)
     * per vector it stores. Zen 3, two threads, C harness with the rows in Python's blocks,
     * 512 x 1024: RMSNorm float32 0.76x the time, float64 LayerNorm 0.9x, float32 LayerNorm
     * 0.85-1.07x (over four shapes; no change beyond the noise). With the residual add (two
     * rows of x, r, y and the sum in flight) it took 1.0-1.17x the time, streamed from memory
     * 0.95-1.5x (rows of 4 KiB the most), so those go a row at a time. */
    const int pair = !has_r && !early && !pieces && !stream && !prefetch && n % W == 0;
    /* scratch (16-bit rows of up to FASTLN_SCRATCH_MAX values, neither fetched nor streamed;
     * see norm_fwd for which): the statistics sweep stores each vector it widens to T in a
     * scratch row, and the output sweep reads it from there instead of loading and widening the
     * row again (the same values, so the same bits). Two scratch rows, used in turn: the
     * statistics of a row may be formed while the row before is written. They lie 2 KiB apart
     * modulo 4 KiB, so that the loads from one and the stores to the other at the same column
     * do not agree in the low 12 bits of their addresses (see fwd_pair_cols). */
    enum { SCRATCH_ROW = sizeof(D) != sizeof(T)
                             ? ((FASTLN_SCRATCH_MAX * sizeof(T) + 4095) / 4096 * 4096 + 2048) /
                                   sizeof(T)
                             : 0 };
    T scratch_buf[2 * SCRATCH_ROW + 64 / sizeof(T)];
    T *const scratch_row0 = (T *)(((uintptr_t)scratch_buf + 63) / 64 * 64);
#define SC_ROW(row) (scratch ? scratch_row0 + ((row) & 1) * SCRATCH_ROW : NULL)
    const NAME(outrow) idle = {0};
    NAME(rowstat) st, next;
    if (ahead_row && rows > 0)
        next = NAME(fwd_stats)(x, r, sum, mean, rstd, 0, n, eps, ahead, shift, idle, 0,
                               SC_ROW(0), has_r, fused, rms);
    for (Py_ssize_t row = 0; row < rows; row++) {
        if (!early && !pieces) {
            st = NAME(fwd_stats)(x, r, sum, mean, rstd, row, n, eps, ahead, shift, idle, 0,
                                 SC_ROW(row), has_r, fused, rms);
        } else {
            st = next;
            if (!pieces && row + 1 < rows)
                next = NAME(fwd_stats)(x, r, sum, mean, rstd, row + 1, n, eps, ahead, shift,
                                       idle, 0, SC_ROW(row + 1), has_r, fused, rms);
        }
        int in_double;
        const NAME(outrow) o = NAME(out_row)(x, r, sum, y, w, b, row, n, st, stream, has_r,
                                             fused, SC_ROW(row), &in_double);
        /* The sum is streamed too when it shares y's alignment. */
        const int stream_sum = stream && fused &&
                               ((uintptr_t)o.sr - (uintptr_t)o.yr) % REGISTER_BYTES == 0;
        Py_ssize_t i = 0;
        if (in_double) {
            for (; i < n; i++) {
                const T si = NAME(at)(o.xr, o.rr, fused, i);
                const double centred = ((double)si - (double)st.pivot) - st.mu;
                NAME(st1)(o.yr + i, (T)(rms ? centred * st.rs * (double)w[i]
                                            : centred * st.rs * (double)w[i] + (double)b[i]));
                if (fused)
                    NAME(st1)(o.sr + i, si);
            }
        } else {
            for (; i < o.head && i < n; i++)
                NAME(fwd_one)(o, i, fused, rms);
        }
        if (pieces && row + 1 < rows) {
            next = NAME(fwd_stats)(x, r, sum, mean, rstd, row + 1, n, eps, ahead, shift,
                                   o, !in_double, SC_ROW(row + 1), has_r, fused, rms);
            if (!in_double)                        /* every whole vector is written */
                i = o.head + (n - o.head) / W * W;
        }
        if (in_double)
            continue;
        if (pair && row + 1 < rows) {
            /* The next row's statistics, then one sweep over both rows. A row finished in
             * double (rare) is left to the next turn, which forms its statistics again. */
            const NAME(rowstat) st2 = NAME(fwd_stats)(x, r, sum, mean, rstd, row + 1, n, eps,
                                                      ahead, shift, idle, 0, SC_ROW(row + 1),
                                                      has_r, fused, rms);
            int in_double2;
            const NAME(outrow) o2 = NAME(out_row)(x, r, sum, y, w, b, row + 1, n, st2, stream,
                                                  has_r, fused, SC_ROW(row + 1), &in_double2);
            if (!in_double2) {
                for (Py_ssize_t k = 0; k < o2.head && k < n; k++)
                    NAME(fwd_one)(o2, k, fused, rms);
                i = NAME(fwd_pair)(o, o2, i, w, b, rms);
                for (; i < n; i++) {
                    NAME(fwd_one)(o, i, fused, rms);
                    NAME(fwd_one)(o2, i, fused, rms);
                }
                row++;
                continue;
            }
        }
        for (Py_ssize_t k = i; split && k + W <= n; k += W)
            NAME(fwd_vec)(o, k, fused, rms, stream, stream_sum, first);
        if (scratch && !pieces)                     /* (never split, streamed or fetched) */
            i = NAME(fwd_scratch_sweep)(o, i, rms);
        else if (!stream && prefetch != 1)
            i = NAME(fwd_plain)(o, i, n, fused, rms, 0);
        for (; i + W <= n; i += W) {
            if (prefetch == 1 && row + dist < rows && (i - o.head) / W % 2 == 0) {
                __builtin_prefetch(o.xr + dist * n + n / 2 + i / 2);
                if (fused)
                    __builtin_prefetch(o.rr + dist * n + n / 2 + i / 2);
            }
            NAME(fwd_vec)(o, i, fused, rms, stream, stream_sum, split ? second : 0);
        }
        for (; i < n; i++)
            NAME(fwd_one)(o, i, fused, rms);
    }
#undef SC_ROW
    if (stream)
        FASTLN_SFENCE();
}

/* Calls f(HAS_R, RMS) for the kind of norm that r and flags ask for: one specialised copy of the
 * code per (residual add, RMSNorm) pair. */
#define FASTLN_BY_KIND(f)                                                                     \
    do {                                                                                      \
        if (flags & FASTLN_RMS) {                                                             \
            if (r != NULL)                                                                    \
                f(1, 1);                                                                      \
            else                                                                              \
                f(0, 1);                                                                      \
        } else {                                                                              \
            if (r != NULL)                                                                    \
                f(1, 0);                                                                      \
            else                                                                              \
                f(0, 0);                                                                      \
        }                                                                                     \
    } while (0)

/* norm_fwd's copy for rows written in pieces (see there), without streaming stores, a function
 * of its own: inlined into norm_fwd beside the other copies, it made them slower (float32 add +
 * RMSNorm on 2048 x 768, 1.08x the time, Zen 5, one thread). */
static TARGET FASTLN_NOINLINE void NAME(fwd_pieces)(const D *x, const D *r, const T *w,
                                                    const T *b, D *sum, D *y, T *mean,
                                                    T *rstd, Py_ssize_t rows, Py_ssize_t n,
                                                    double eps, int flags, int prefetch)
{
#define FASTLN_PIECES(HAS_R, RMS)                                                             \
    NAME(fwd_rows)(x, r, w, b, sum, y, mean, rstd, rows, n, eps, 0, prefetch, 1, 0, HAS_R, RMS)
    FASTLN_BY_KIND(FASTLN_PIECES);
#undef FASTLN_PIECES
}

/* norm_fwd's copies for cached 16-bit rows read back from a scratch row (see there and
 * fwd_rows), in a function of their own; float16 rows are written in pieces, as norm_fwd's rule
 * for them says of these rows, bfloat16 ones not. Zen 4, one thread, C harness: with the
 * scratch chosen at run time in the copies that serve other rows too, bfloat16 add + LayerNorm
 * from memory (8192 x 768, where no scratch is used) took 1.15-1.18x the time; with these
 * copies inlined into norm_fwd beside the others, float16 LayerNorm and bfloat16 RMSNorm rows of
 * 256 took 1.05-1.1x, bfloat16 LayerNorm rows of 2048 1.05x. */
static TARGET FASTLN_NOINLINE void NAME(fwd_scratch)(const D *x, const D *r, const T *w,
                                                     const T *b, D *sum, D *y, T *mean,
                                                     T *rstd, Py_ssize_t rows, Py_ssize_t n,
                                                     double eps, int flags)
{
#define FASTLN_SCRATCH(HAS_R, RMS)                                                            \
    NAME(fwd_rows)(x, r, w, b, sum, y, mean, rstd, rows, n, eps, 0, 0, FASTLN_F16, 1, HAS_R, RMS)
    FASTLN_BY_KIND(FASTLN_SCRATCH);
#undef FASTLN_SCRATCH
}

/* Whether a row of `out` starts less than 384 bytes ahead, modulo 4 KiB, of row r + d of in0,
 * in1 or in2 (NULL: none) for some |d| < span, rows being n values apart in every array. The CPU
 * compares addresses modulo 4 KiB first: the loads of the input rows that a sweep reads next
 * then look like they touch lines that `out`'s non-temporal stores are filling, and the CPU
 * flushes its write-combining buffers half full (see wc_conflict and norm_fwd). */
static TARGET int NAME(just_ahead)(const D *out, const D *in0, const D *in1, const D *in2,
                                   Py_ssize_t n, int span)
{
    const uintptr_t row = (uintptr_t)n * sizeof(D);
    const D *in[3] = {in0, in1, in2};
    for (int a = 0; a < 3; a++)
        for (int d = -(span - 1); in[a] != NULL && d < span; d++) {
            const uintptr_t ahead = ((uintptr_t)out - (uintptr_t)in[a] - row * (uintptr_t)d) % 4096;
            if (ahead > 0 && ahead <= 384)
                return 1;
        }
    return 0;
}

/* Forward over a block of rows: see fwd_rows; `r` and `sum` are NULL without the residual add,
 * `b` and `mean` with FASTLN_RMS. One specialised copy per (add, RMS) pair. */
static TARGET void NAME(norm_fwd)(const D *x, const D *r, const T *w, const T *b, D *sum, D *y,
                                  T *mean, T *rstd, Py_ssize_t rows, Py_ssize_t n, double eps,
                                  int flags)
{
    /* Data too large for the cache (FASTLN_STREAM) is fetched ahead, the hardware prefetcher
     * stopping at page boundaries, and y is written with non-temporal stores (not the sum of
     * 16-bit data, which is read back at once). Rows of up to 16 KiB fetch a row further on
     * while they are swept (see fwd_rows): on Zen 5, one thread, fetching it all while this
     * row was normalized took 0.78x the time of no prefetch on 65536 x 1024 float32, 0.85x on
     * 4096 x 4096, 0.85x on 8192 x 768 with the residual add. Longer rows, where that took
     * 1.2-1.4x the time, fetch 4 KiB ahead of their statistics sweep instead: 0.8x the time on
     * 1024 x 16384 float32, 0.65x on 4096 x 4096 float64. FASTLN_FETCH (16-bit data of 20 to
     * 32 MiB; see _cpu.pyx) fetches the same way but stores plainly. */
    const int large = (flags & FASTLN_STREAM) != 0, fetch = large || (flags & FASTLN_FETCH);
    /* 16-bit y streams in rows of 4 KiB and more: Zen 5, one thread, float16, 0.77x the time
     * on 4096 x 4096, 0.73x on 16384 x 4096, 0.93x on 8192 x 2048; rows of 768 and 1024 values
     * took 1.0-1.14x (its stores are half a cache line). */
    /* The residual add's y and sum (both streamed, in float32 and float64) stream only where
     * not both start just ahead of a row of x or r (just_ahead). Zen 3, two threads, float32
     * add + LayerNorm 8192 x 1024 with both 16 to 192 bytes ahead of r took 1.6-4.9x the time
     * of both elsewhere (modulo 4 KiB), 1024 x 8192 and 8192 x 768 with both 48 bytes ahead of
     * r 6-7x (fresh outputs that fastln reused after making them for an x placed otherwise);
     * with plain stores there, 1.0-1.4x. With only y 16 to 384 bytes ahead of r, streaming
     * took 1.0-1.8x the time and plain stores 1.5-1.7x; without the add, y 48 or 64 bytes
     * ahead of x took no longer streamed. */
    const int stream = large && (sizeof(D) == sizeof(T) || (size_t)n * sizeof(D) >= 4096) &&
                       !(r != NULL && sizeof(D) == sizeof(T) &&
                         NAME(just_ahead)(y, x, r, NULL, n, 2) &&
                         NAME(just_ahead)(sum, x, r, NULL, n, 2));
    const int prefetch = !fetch ? 0 : (size_t)n * sizeof(D) <= 16384 ? 1 : 2;
    /* Cached data is normalized by copies of the code without streaming stores and prefetches:
     * with them tested at run time, float32 rows of 768 with the residual add and bfloat16
     * rows of 1024 took 1.04-1.06x the time (Zen 5, one thread). float32 and float64 rows of
     * 4 vectors and more whose data stays in the L2 caches (FASTLN_IN_L2) go to a copy that
     * writes each row in pieces while the next row's statistics are formed (see fwd_rows).
     * Zen 5, one thread, against each row's output after its statistics: 64 x 768 float32 0.83x
     * the time, with the residual add 0.82x, RMSNorm 0.9x; 256 x 256 0.82x; 8 x 4096 0.9x;
     * float64 0.84x. Data in the L3 cache gained less or lost (the residual add 1.1-1.3x the
     * time on 2048 x 768, two threads), and rows of fewer vectors, with the choice tested in
     * the row loop, 1.02-1.2x.
     * 16-bit rows of 512 values and more (whose statistics are otherwise formed a row early) are
     * written in pieces too: float16 whenever y does not stream (LayerNorm cached, 64 x 768
     * 0.92x the time, 48 x 1024 with the residual add 0.9x; from the L3 cache 4096 x 768 0.9x,
     * 2048 x 1024 with the add 0.89x), and every 16-bit norm from memory whose y does not
     * stream (rows under 4 KiB): float16 LayerNorm 16384 x 1024 0.73x, with the add 0.88x,
     * RMSNorm 0.83x, bfloat16 0.86x, RMSNorm 0.8x. Cached, bfloat16 took 1.0-1.05x the time
     * (Zen 3, AVX2: LayerNorm 1.1x), 16-bit rows of 256 1.07x; float16 RMSNorm took 1.0-1.05x on
     * Zen 5 and 0.78-0.8x on Zen 3 (AVX2; 64 x 768 and 64 x 1024, 8192 x 768 0.74x), so it is
     * written in pieces. */
    const int pieces = sizeof(D) == sizeof(T)
                           ? !large && (flags & FASTLN_IN_L2) && n >= 4 * W
                           : (size_t)n * sizeof(D) >= 1024 && !stream && (fetch || FASTLN_F16);
    /* Cached 16-bit rows of 512 to FASTLN_SCRATCH_MAX values are read back from a scratch row
     * in T (see fwd_rows), by copies of the code of their own (fwd_scratch). Zen 4, one thread,
     * C harness built with Python's flags, against widening the row twice, 512 x 1024 (the
     * residual add 512 x 768): float16 LayerNorm 0.91-0.93x the time, RMSNorm 0.89-0.91x, with
     * the add 0.92-0.94x; bfloat16 LayerNorm 0.9-0.92x, with the add 0.94-0.96x, RMSNorm
     * 0.97-1.02x; rows of 1280 and 1600 0.89-0.93x (two threads, 1600 x 1280, 0.9-0.93x); the
     * avx2 path's bfloat16 0.9-0.96x; the baseline path (whose float16 widens one value at a
     * time) float16 LayerNorm 0.52x, RMSNorm 0.63x, with the add 0.73-0.79x, bfloat16
     * 0.85-0.92x. float16 on the avx2 path goes without: its rows are written in pieces,
     * where with 16 registers GCC kept the row's constants and the scratch row's pointer on the
     * stack (LayerNorm 1.3x the time; RMSNorm, with the scratch chosen at run time, 1.0-1.05x).
     * Rows of 2048 took 0.89-1.17x the time (float16 LayerNorm 1.06-1.1x; the scratch rows then
     * fill half the level-1 cache); built without -fwrapv, rows of 64 and 256 0.97-1.18x, and
     * 16-bit rows of 1024 fetched from memory (65536 x 1024, two threads) 1.03-1.18x. */
    const int scratch = sizeof(D) != sizeof(T) && !fetch && n >= 512 && n <= FASTLN_SCRATCH_MAX &&
                        !(FASTLN_F16 && REGISTER_BYTES == 32);
    if (scratch) {
        NAME(fwd_scratch)(x, r, w, b, sum, y, mean, rstd, rows, n, eps, flags);
        return;
    }
    if (pieces) {
        NAME(fwd_pieces)(x, r, w, b, sum, y, mean, rstd, rows, n, eps, flags, prefetch);
        return;
    }
#define FASTLN_FWD_ROWS(HAS_R, RMS)                                                           \
    do {                                                                                      \
        if (fetch)                                                                            \
            NAME(fwd_rows)(x, r, w, b, sum, y, mean, rstd, rows, n, eps, stream, prefetch, 0, \
                           0, HAS_R, RMS);                                                    \
        else                                                                                  \
            NAME(fwd_rows)(x, r, w, b, sum, y, mean, rstd, rows, n, eps, 0, 0, 0, 0, HAS_R,   \
                           RMS);                                                              \
    } while (0)
    FASTLN_BY_KIND(FASTLN_FWD_ROWS);
#undef FASTLN_FWD_ROWS
}

/* One vector of row_grad_sums' sweep (d = s - k, g = dy * w) added to chain c of a block's
 * sums (the mean's and the gradient's only for LayerNorm). */
static TARGET FASTLN_ALWAYS_INLINE void NAME(grad_step)(V d, V g, const int rms, V *restrict bd,
                                                        V *restrict bg, V *restrict bgd)
{
    if (!rms) {
        *bd += d;
        *bg += g;
    }
    *bgd = NAME(fma)(g, d, *bgd);
}

/* With ahead (rows from memory), the block of x and dy at element i fetched ahead. */
static TARGET FASTLN_ALWAYS_INLINE void NAME(grad_fetch)(const D *x, const D *dy, Py_ssize_t i,
                                                         Py_ssize_t ahead)
{
    if (ahead) {
        NAME(fetch_block)(x, NULL, 0, i, ahead, 0);
        NAME(fetch_block)(dy, NULL, 0, i, ahead, 0);
    }
}

/* A block's two chains of each sum added to the row's per-lane double sums. */
static TARGET FASTLN_ALWAYS_INLINE void NAME(grad_block_end)(LANES *ld, LANES *lg, LANES *lgd,
                                                             const V bd[2], const V bg[2],
                                                             const V bgd[2], const int rms)
{
    if (!rms) {
        NAME(lanes_add)(ld, bd[0] + bd[1]);
        NAME(lanes_add)(lg, bg[0] + bg[1]);
    }
    NAME(lanes_add)(lgd, bgd[0] + bgd[1]);
}

/* The end of row_grad_sums (and row_grad_sums_at): the lanes' totals, the columns from `from`
 * on (after the last whole vector) added one at a time in double, and out[] (see there). */
static TARGET FASTLN_ALWAYS_INLINE void NAME(grad_sums_end)(LANES ld, LANES lg, LANES lgd,
                                                            const D *restrict x,
                                                            const D *restrict dy,
                                                            const T *restrict w,
                                                            Py_ssize_t from, Py_ssize_t n, T k,
                                                            const int rms,
                                                            double *restrict out)
{
    double sd = NAME(lanes_total)(ld), sg = NAME(lanes_total)(lg),
           sgd = NAME(lanes_total)(lgd);
    for (Py_ssize_t i = from; i < n; i++) {
        const double d = (double)(NAME(ld1)(x + i) - k);
        const double g = (double)NAME(ld1)(dy + i) * (double)w[i];
        sd += d;
        sg += g;
        sgd += g * d;
    }
    out[0] = rms ? 0.0 : sd;
    out[1] = rms ? 0.0 : sg;
    out[2] = sgd;
}

/* Whether row_grad_sums_at is compiled: on the AVX-512 paths, for float32 and float64 data. */
#if FASTLN_X86_DISPATCH && FASTLN_VECTOR_EXT && REGISTER_BYTES == 64 && !defined(FASTLN_HALF)
#define FASTLN_ALIGNED_SUMS 1
#else
#define FASTLN_ALIGNED_SUMS 0
#endif
#if FASTLN_ALIGNED_SUMS
typedef __mmask16 NAME(mask);
/* a + b in the lanes of m, a in the others. */
static TARGET FASTLN_ALWAYS_INLINE V NAME(madd)(V a, NAME(mask) m, V b)
{
    if (sizeof(T) == sizeof(float))
        return (V)_mm512_mask_add_ps((__m512)a, m, (__m512)a, (__m512)b);
    return (V)_mm512_mask_add_pd((__m512d)a, (__mmask8)m, (__m512d)a, (__m512d)b);
}

/* NAME(fma)(a, b, c) in the lanes of m, c in the others. */
static TARGET FASTLN_ALWAYS_INLINE V NAME(mfma)(V a, V b, V c, NAME(mask) m)
{
    if (sizeof(T) == sizeof(float))
        return (V)_mm512_mask3_fmadd_ps((__m512)a, (__m512)b, (__m512)c, m);
    return (V)_mm512_mask3_fmadd_pd((__m512d)a, (__m512d)b, (__m512d)c, (__mmask8)m);
}

/* The lanes of m from p, zeros in the others (which are not read). */
static TARGET FASTLN_ALWAYS_INLINE V NAME(mload)(NAME(mask) m, const T *p)
{
    if (sizeof(T) == sizeof(float))
        return (V)_mm512_maskz_loadu_ps(m, p);
    return (V)_mm512_maskz_loadu_pd((__mmask8)m, p);
}

/* row_grad_sums for a row x (and dy and w, at best placed alike) that starts a values past a
 * 64-byte boundary (0 < a < W), read in aligned vectors, with the same result to the bit.
 * Aligned vector u holds in lane L the value at u * W - a + L, which row_grad_sums reads into
 * lane l = (L - a) % W of its vector u (lanes L >= a) or u - 1 (L < a). Here lane L gets the
 * values that lane l gets there, added in the same order: a block of vectors [v, v + len) takes
 * the lanes >= a of aligned vectors [v, v + len) and the lanes < a of [v + 1, v + len + 1) (the
 * vector at a block's end is loaded once and its lanes >= a carried into the next block).
 * The lanes < a of each vector so go to the other of the two chains, which are added before the
 * block is added to the lanes' double sums (the same sum), and the lanes are those of
 * row_grad_sums turned by a places, which their total (pairs of lanes W / 2 apart, then W / 4
 * apart, ...) does not see: each step adds the same pairs.
 *
 * NumPy places large arrays 16 bytes past a 64-byte boundary, and on Zen 4, which splits each
 * 512-bit access in two 256-bit halves, a load whose second half crosses a cache line costs
 * about 1.5 aligned ones. Zen 4, one thread, C harness built with Python's flags, float32
 * LayerNorm backward with x, dy and dx 16 bytes off and the weight elsewhere (norm_bwd copies
 * it into place), against row_grad_sums' loads from the row's start: 64 x 1024 took
 * 0.87-0.9x the time, 64 x 768 0.93x, RMSNorm 64 x 1024 0.88x, 16 x 4096 0.96x, 8 x 1024
 * 0.94x, 8192 x 768 from memory 0.96x, 512 x 8192 1.0x, rows of 768 one or two at a time
 * (without the copy) 0.99-1.0x; with all arrays aligned the sweep is not used. */
static TARGET FASTLN_ALWAYS_INLINE void NAME(row_grad_sums_at)(const T *restrict x,
                                                               const T *restrict dy,
                                                               const T *restrict w,
                                                               Py_ssize_t n, T k, int a,
                                                               Py_ssize_t ahead, const int rms,
                                                               double *restrict out)
{
    LANES ld = NAME(lanes_zero)(), lg = ld, lgd = ld;
    const V kv = NAME(splat)(k), zero = NAME(splat)(0);
    const Py_ssize_t nvec = n / W;
    const T *xa = x - a, *dya = dy - a, *wa = w - a;
    const NAME(mask) all = (NAME(mask))((1u << W) - 1u), hi = (NAME(mask))(all << a) & all,
                     lo = (NAME(mask))(all & ~hi);
    /* The lanes >= a of the aligned vector at a block's start. */
    V d0 = NAME(mload)(hi, xa) - kv, g0 = NAME(mload)(hi, dya) * NAME(mload)(hi, wa);
    Py_ssize_t v = 0;
    while (v < nvec) {
        const int len = nvec - v < BLOCK ? (int)(nvec - v) : BLOCK;
        V bd[2] = {zero, zero}, bg[2] = {zero, zero}, bgd[2] = {zero, zero};
        NAME(grad_fetch)(x, dy, v * W, ahead);
        if (!rms) {
            bd[0] = NAME(madd)(bd[0], hi, d0);
            bg[0] = NAME(madd)(bg[0], hi, g0);
        }
        bgd[0] = NAME(mfma)(g0, d0, bgd[0], hi);
        /* Aligned vectors v + 1, v + 2, ... in chains 1, 0, 1, ... (each chain known at compile
         * time: indexed at run time, GCC kept them in memory, 2x the time). */
        for (int s = 1; s < len + 1; s += 2)
            for (int c = 1; c >= 0 && s + 1 - c < len; c--) {
                const Py_ssize_t i = (v + s + 1 - c) * W;
                NAME(grad_step)(NAME(load)(xa + i) - kv,
                                NAME(load)(dya + i) * NAME(load)(wa + i), rms, &bd[c],
                                &bg[c], &bgd[c]);
            }
        /* The aligned vector v + len: its lanes < a end this block (beyond the last whole
         * vector, only they are read), its lanes >= a start the next. */
        const Py_ssize_t u = v + len;
        const NAME(mask) m = u < nvec ? all : lo;
        d0 = NAME(mload)(m, xa + u * W) - kv;
        g0 = NAME(mload)(m, dya + u * W) * NAME(mload)(m, wa + u * W);
        for (int c = 0; c < 2; c++)
            if (c == (len & 1)) {
                if (!rms) {
                    bd[c] = NAME(madd)(bd[c], lo, d0);
                    bg[c] = NAME(madd)(bg[c], lo, g0);
                }
                bgd[c] = NAME(mfma)(g0, d0, bgd[c], lo);
            }
        v += len;
        NAME(grad_block_end)(&ld, &lg, &lgd, bd, bg, bgd, rms);
    }
    NAME(grad_sums_end)(ld, lg, lgd, x, dy, w, nvec * W, n, k, rms, out);
}
#endif

/* The three sums the backward needs from one row, about the pivot k (the saved mean):
 * sum(x - k), sum(g) and sum(g * (x - k)) with g = dy * w. RMSNorm (rms, k = 0) needs only the
 * last, and only it is formed, the others given as 0 (Zen 3, one thread, cached rows of 1024:
 * the whole backward took 0.92x the time in float32, 0.85x in float16, 0.97x in float64; the
 * same bits). Blocks of BLOCK vectors are summed in T, even and odd vectors in two chains of
 * each sum (one chain waited on the latency of its adds and FMAs: Zen 5, one thread, cached rows
 * of 1024, the whole backward took 0.88x the time with two in float32, 0.86x in float64, the
 * same in 16-bit, where the conversions set the pace; four were slower than two, and for
 * RMSNorm's one sum on Zen 3 no faster), then added to per-lane double sums; lanes and tail in
 * double. Rows off a 64-byte boundary take row_grad_sums_at on the AVX-512 paths. */
static TARGET FASTLN_ALWAYS_INLINE void NAME(row_grad_sums)(const D *restrict x,
                                                            const D *restrict dy,
                                                            const T *restrict w, Py_ssize_t n,
                                                            T k, Py_ssize_t ahead,
                                                            const int rms, double *restrict out)
{
#if FASTLN_ALIGNED_SUMS
    const int a = (int)((uintptr_t)x % 64 / sizeof(T));
    if (a != 0 && (uintptr_t)x % sizeof(T) == 0 && n >= W) {
        NAME(row_grad_sums_at)(x, dy, w, n, k, a, ahead, rms, out);
        return;
    }
#endif
    LANES ld = NAME(lanes_zero)(), lg = ld, lgd = ld;
    const V kv = NAME(splat)(k), zero = NAME(splat)(0);
    const Py_ssize_t nvec = n / W;
    Py_ssize_t v = 0;
    while (v < nvec) {
        const int len = nvec - v < BLOCK ? (int)(nvec - v) : BLOCK;
        V bd[2] = {zero, zero}, bg[2] = {zero, zero}, bgd[2] = {zero, zero};
        NAME(grad_fetch)(x, dy, v * W, ahead);
        for (int s = 0; s < len; s += 2)
            for (int c = 0; c < 2 && s + c < len; c++) {
                const Py_ssize_t i = (v + s + c) * W;
                NAME(grad_step)(NAME(lds)(x + i) - kv, NAME(lds)(dy + i) * NAME(load)(w + i),
                                rms, &bd[c], &bg[c], &bgd[c]);
            }
        v += len;
        NAME(grad_block_end)(&ld, &lg, &lgd, bd, bg, bgd, rms);
    }
    NAME(grad_sums_end)(ld, lg, lgd, x, dy, w, nvec * W, n, k, rms, out);
}

/* One row of the backward entirely in double, for rows the T sweep cannot take: float32 rows
 * with values near FLT_MAX or an rstd beyond 2^+-60, where products and sums of T would over- or
 * underflow, and LayerNorm rows of one value (whose dx is then exactly 0). Adds the row's
 * dweight and dbias shares straight to the double partials. k is the pivot (the saved mean; 0
 * for RMSNorm, which subtracts no mean), ds the incoming gradient of the fused add's sum or
 * NULL. */
static TARGET void NAME(bwd_row_exact)(const D *restrict dy, const D *restrict x, double k,
                                       double rs, const T *restrict w, const D *restrict ds,
                                       D *restrict dx, double *restrict dw_part,
                                       double *restrict db_part, Py_ssize_t n, int rms)
{
    double sd = 0.0, sg = 0.0, sgd = 0.0;
    for (Py_ssize_t i = 0; i < n; i++) {
        const double d = (double)NAME(ld1)(x + i) - k;
        const double g = (double)NAME(ld1)(dy + i) * (double)w[i];
        sd += d;
        sg += g;
        sgd += g * d;
    }
    const double shift = rms ? 0.0 : sd / (double)n, mg = rms ? 0.0 : sg / (double)n;
    const double c = rs * (sgd - shift * sg) / (double)n;
    for (Py_ssize_t i = 0; i < n; i++) {
        const double dyi = (double)NAME(ld1)(dy + i);
        const double xhat = (((double)NAME(ld1)(x + i) - k) - shift) * rs;
        const double d = rs * ((dyi * (double)w[i] - mg) - xhat * c);
        NAME(st1)(dx + i, (T)(ds != NULL ? d + (double)NAME(ld1)(ds + i) : d));
        dw_part[i] += dyi * xhat;
        db_part[i] += dyi;
    }
}

/* Column j of the backward's second sweep over a group of nr rows (dy, x and ds point at the
 * group's first row): each row's dx vector in d[r], and the group's dweight and dbias shares
 * added to the staged sums stw and stb (`staged`, float32; see norm_bwd), or else to the double
 * partials. Rows flagged in `exact` (NULL: none) are skipped. Per row r, pv, rsv, nshv, ncv and
 * nrmgv hold (see norm_bwd) the pivot p, rs = rstd, nsh = -shift * rs, nc = -c and
 * nrmg = -rs * mean(g):
 *   xhat = (x - p) * rs + nsh,   dx = g * rs + (xhat * nc + nrmg),   g = dy * w,
 * seven operations per value with FMA, the sums for dweight and dbias included.
 *
 * dy is held in a register (FASTLN_IN_REGISTER) for its three uses. GCC 12 otherwise loaded it
 * three times, as memory operands of the product g, the dweight FMA and the dbias add, in the
 * float32 sweep over groups of 2 rows with the stage. Zen 4, one thread, C harness built with
 * Python's flags, best of four processes each, cached float32 rows: the whole backward of
 * LayerNorm 512 x 1024 and 8 x 768 took 0.9-0.92x the time, 512 x 768 0.94x, RMSNorm
 * 512 x 1024 0.92x; float64, 16-bit data, the fused add's ds, rows of 4096 and the avx2 and
 * baseline paths 0.98-1.01x, all with the same bits. From Python, two threads, the bench's
 * arrays, four pairs of processes: LayerNorm 512 x 1024 0.84-0.99x, RMSNorm 0.92-1.02x,
 * 8192 x 768 from memory 0.86-1.09x. The weight's vector is held likewise (GCC loaded it once
 * per row of a group): Zen 4, harness, LayerNorm 64 x 1024 0.98x, RMSNorm 0.96x, other shapes,
 * float16, bfloat16 and avx2 0.98-1.02x.
 *
 * Zen 4 (AVX-512 on 256-bit units), measured in loops of their own: a 512-bit store takes 2
 * cycles, a load 1 (1.5-1.7 where it crosses a cache line), and stores and FMAs slow each other
 * (a store and two FMAs took 3.7 cycles, a store and two products 2). Yet splitting this
 * sweep's FMAs into products and sums took 1.06-1.12x the time of the whole backward (float32
 * 64 x 1024, C harness), and this loop alone, all in the level-1 cache, took 6.6 cycles per
 * vector of a row aligned, 11 with every array 16 bytes off. */
static TARGET FASTLN_ALWAYS_INLINE void
NAME(bwd_vec)(const D *restrict dy, const D *restrict x, const T *restrict w,
              const D *restrict ds, T *restrict stw, T *restrict stb, double *restrict dw_part,
              double *restrict db_part, Py_ssize_t n, Py_ssize_t j, int nr, const int *exact,
              const V *pv, const V *rsv, const V *nshv, const V *ncv, const V *nrmgv,
              const int rms, const int has_ds, const int staged, const D *next_dy,
              const D *next_x, V d[GROUP_ROWS])
{
    V wv = NAME(load)(w + j);
    FASTLN_IN_REGISTER(wv);
    V dwa = NAME(splat)(0), dba = NAME(splat)(0);
    /* The same cache line of each row of a later group (next_x, next_dy; NULL: none),
     * fetched for the level-2 cache (long rows' groups leave little room in level 1). Where a
     * vector is half a line (16-bit data, the avx2 path), fetching only at every other vector
     * gained nothing (Zen 4, one thread, C harness: float16 LayerNorm 1024 x 8192 1.02x the
     * time, 4096 x 4096 1.06x, float32 8192 x 1024 on the avx2 path 0.97-1.0x). */
    if (next_x != NULL)
        for (int r = 0; r < nr; r++) {
            __builtin_prefetch(next_x + r * n + j, 0, 2);
            __builtin_prefetch(next_dy + r * n + j, 0, 2);
        }
    for (int r = 0; r < nr; r++) {
        if (exact != NULL && exact[r])
            continue;
        const Py_ssize_t off = r * n + j;
        V dyv = NAME(lds)(dy + off);
        FASTLN_IN_REGISTER(dyv);
        V xhat;
        if (rms)
            xhat = NAME(lds)(x + off) * rsv[r];
        else
            xhat = NAME(fma)(NAME(lds)(x + off) - pv[r], rsv[r], nshv[r]);
        d[r] = NAME(fma)(dyv * wv, rsv[r], NAME(fma)(xhat, ncv[r], nrmgv[r]));
        if (has_ds)
            d[r] += NAME(lds)(ds + off);
        dwa = NAME(fma)(dyv, xhat, dwa);
        if (!rms)
            dba += dyv;
    }
    if (staged) {
        NAME(store)(stw + j, NAME(load)(stw + j) + dwa);
        if (!rms)
            NAME(store)(stb + j, NAME(load)(stb + j) + dba);
    } else {
        NAME(accumulate)(dw_part + j, dwa);
        if (!rms)
            NAME(accumulate)(db_part + j, dba);
    }
}

/* The vector columns [from, to) of the backward's second sweep over a group of nr rows (dy, x,
 * ds and dx point at the group's first row; see bwd_vec): writes dx, streamed with `stream`.
 * Per row r the constants kc[0..4][r] are those of bwd_vec.
 *
 * Streamed dx is written a cache line of each row at a time, where a vector is less than a
 * line: all rows' vectors of a line are computed, then stored row by row. Stored a vector of
 * each row in turn, which fills the rows' write-combining buffers side by side, float32 and
 * float64 rows of 1024 took 1.1-1.4x the time from memory (Zen 3, one thread, with the next
 * group fetched ahead). Cached bfloat16 dx goes the same way where sts2 rounds a line's two
 * vectors with one instruction: Zen 4, one thread, C harness, LayerNorm 64 x 1024 0.99x the
 * time, RMSNorm 0.95x, 8 x 4096 0.98x, rows of 768 1.0-1.02x (the same bits). */
static TARGET FASTLN_ALWAYS_INLINE void
NAME(bwd_cols)(const D *restrict dy, const D *restrict x, const T *restrict w,
               const D *restrict ds, D *restrict dx, T *restrict stw, T *restrict stb,
               double *restrict dw_part, double *restrict db_part, Py_ssize_t n,
               Py_ssize_t from, Py_ssize_t to, int nr,
               const int *exact, const T kc[5][GROUP_ROWS], int stream, const int rms,
               const int has_ds, const int staged, const D *next_dy, const D *next_x)
{
    V pv[GROUP_ROWS], rsv[GROUP_ROWS], nshv[GROUP_ROWS], ncv[GROUP_ROWS], nrmgv[GROUP_ROWS];
    for (int r = 0; r < nr; r++) {
        pv[r] = NAME(splat)(kc[0][r]);
        rsv[r] = NAME(splat)(kc[1][r]);
        nshv[r] = NAME(splat)(kc[2][r]);
        ncv[r] = NAME(splat)(kc[3][r]);
        nrmgv[r] = NAME(splat)(kc[4][r]);
    }
    enum { LINE = W * sizeof(D) < 64 ? 64 / (W * sizeof(D)) : 1 };  /* vectors per line */
#define FASTLN_VEC(J, D_OUT)                                                                  \
    NAME(bwd_vec)(dy, x, w, ds, stw, stb, dw_part, db_part, n, J, nr, exact, pv, rsv, nshv,    \
                  ncv, nrmgv, rms, has_ds, staged, next_dy, next_x, D_OUT)
    for (Py_ssize_t j = from; j < to;) {
        /* Stored after the group's loads: with rows a multiple of 4 KiB apart, a store to row r
         * followed by a load from row r + 1 would look like the same address to the CPU's
         * store-to-load check (which compares the low 12 bits) and stall. */
        if ((stream ? (uintptr_t)(dx + j) % 64 == 0 : FASTLN_STS2) && LINE > 1 &&
            j + LINE * W <= to) {
            V d[LINE][GROUP_ROWS];
            for (int k = 0; k < LINE; k++)
                FASTLN_VEC(j + k * W, d[k]);
            for (int r = 0; r < nr; r++) {
                if (exact != NULL && exact[r])
                    continue;
                if (!stream)
                    for (int k = 0; k + 1 < LINE; k += 2)
                        NAME(sts2)(dx + r * n + j + k * W, d[k][r], d[k + 1][r]);
                else
                    for (int k = 0; k < LINE; k++)
                        NAME(streams)(dx + r * n + j + k * W, d[k][r]);
            }
            j += LINE * W;
        } else {
            V d[GROUP_ROWS];
            FASTLN_VEC(j, d);
            for (int r = 0; r < nr; r++) {
                if (exact != NULL && exact[r])
                    continue;
                if (stream)
                    NAME(streams)(dx + r * n + j, d[r]);
                else
                    NAME(sts)(dx + r * n + j, d[r]);
            }
            j += W;
        }
    }
#undef FASTLN_VEC
}

/* The columns [j + lo, j + hi) of bwd_cols' sweep over a group of nr rows (0 <= lo < hi <= W,
 * 0 <= j <= n - W): the columns before `head` and after the last whole vector (see norm_bwd).
 * The whole vector at column j is computed as bwd_cols computes one: row r's dx is stored to
 * out + r * ostride (all W values; those outside [lo, hi) are the ones bwd_cols writes), and
 * only the lanes [lo, hi) of the dweight and dbias shares are added to the stage (stw, stb; NULL:
 * none) or the partials. Every column so comes out as it would in the vector sweep. Rows flagged
 * in `exact` are skipped. */
static TARGET void NAME(bwd_edge)(const D *restrict dy, const D *restrict x, const T *restrict w,
                                  const D *restrict ds, D *restrict out, Py_ssize_t ostride,
                                  T *restrict stw, T *restrict stb, double *restrict dw_part,
                                  double *restrict db_part, Py_ssize_t n, Py_ssize_t j, int lo,
                                  int hi, int nr, const int *exact, const T kc[5][GROUP_ROWS],
                                  const int rms, const int has_ds)
{
    const V wv = NAME(load)(w + j);
    V dwa = NAME(splat)(0), dba = dwa;
    for (int r = 0; r < nr; r++) {
        if (exact[r])
            continue;
        const Py_ssize_t off = r * n + j;
        const V dyv = NAME(lds)(dy + off), rsv = NAME(splat)(kc[1][r]);
        V xhat;
        if (rms)
            xhat = NAME(lds)(x + off) * rsv;
        else
            xhat = NAME(fma)(NAME(lds)(x + off) - NAME(splat)(kc[0][r]), rsv,
                             NAME(splat)(kc[2][r]));
        V d = NAME(fma)(dyv * wv, rsv,
                        NAME(fma)(xhat, NAME(splat)(kc[3][r]), NAME(splat)(kc[4][r])));
        if (has_ds)
            d += NAME(lds)(ds + off);
        NAME(sts)(out + r * ostride, d);
        dwa = NAME(fma)(dyv, xhat, dwa);
        dba += dyv;
    }
    T sw[W], sb[W];
    memcpy(sw, &dwa, sizeof sw);
    memcpy(sb, &dba, sizeof sb);
    for (int l = lo; l < hi; l++)
        if (stw != NULL) {
            stw[j + l] += sw[l];
            stb[j + l] += sb[l];
        } else {
            dw_part[j + l] += (double)sw[l];
            db_part[j + l] += (double)sb[l];
        }
}

/* part[0:n] += stage[0:n] in double, the columns [head, vec_end) as whole vectors; clear: the
 * stage is then zeroed. */
static TARGET void NAME(flush_stage)(T *restrict stage, double *restrict part, Py_ssize_t head,
                                     Py_ssize_t vec_end, Py_ssize_t n, int clear)
{
    for (Py_ssize_t j = head; j < vec_end; j += W) {
        NAME(accumulate)(part + j, NAME(load)(stage + j));
        if (clear)
            NAME(store)(stage + j, NAME(splat)(0));
    }
    for (Py_ssize_t k = 0; k < head + (n - vec_end); k++) {
        const Py_ssize_t j = k < head ? k : vec_end + (k - head);
        part[j] += (double)stage[j];
        if (clear)
            stage[j] = 0;
    }
}

/* Whether streaming dx (non-temporal stores, which fill a write-combining buffer per cache line
 * until the line is complete) would make the CPU flush those buffers half full, for a group of
 * `group` rows of n values. It compares addresses modulo 4 KiB, as the CPU does first:
 *  - 16-byte stores (16-bit data on AVX2; every dtype on the baseline path), four to a line:
 *    two rows of a group whose lines fall on the same 4 KiB offset (rows of 2048 float16
 *    values, 4 KiB apart, which now go one at a time (one_row, see norm_bwd); measured before
 *    bwd_cols wrote a line of each row at a time, when 16-bit data from memory still went in
 *    groups of 4, rows of 1024 2 KiB apart too);
 *  - a row of dx less than 384 bytes ahead of a row of x, dy or ds in the group, which the
 *    next steps of the sweep then read (just_ahead); not for short float32 and float64 rows
 *    (short_rows, see norm_bwd).
 * Zen 3, one thread, such backwards took 4-8x the time with non-temporal stores as with plain
 * ones (float32 rows of 1024 with dx 32 to 256 bytes ahead of x; float16 rows of 1024 and
 * 2048 wherever dx was), against 0.65-1.0x elsewhere. float32 rows of 768 with dx 64 or 128
 * bytes ahead of x took 0.65-0.7x the time of plain stores with non-temporal ones, as long
 * as with dx elsewhere. */
static TARGET int NAME(wc_conflict)(const D *dy, const D *x, const D *ds, const D *dx,
                                    Py_ssize_t n, int group, int short_rows)
{
    const uintptr_t row = (uintptr_t)n * sizeof(D);
    if (W * sizeof(D) < 32)
        for (int d = 1; d < group; d++) {
            const uintptr_t m = row * (uintptr_t)d % 4096;
            if (m < 128 || m > 4096 - 128)
                return 1;
        }
    if (short_rows && sizeof(D) == sizeof(T))
        return 0;
    return NAME(just_ahead)(dx, x, dy, ds, n, group);
}

/* Backward over a block of rows, fused: one sweep of reductions per row, then one sweep over a
 * group of rows (GROUP_ROWS, 2 or 1) that writes their dx and adds their share of dweight and
 * dbias to the block's double partials. The shares are summed over the group in T and, where the
 * rows are not fetched from memory, in float32 over STAGE_ROWS rows (the stage, below) before
 * they are added to the partials in double. The partials are added to, never cleared.
 *
 *   LayerNorm:  xhat = (x - mean) * rstd,  g = dy * w,
 *               dx = rstd * (g - mean(g)) - xhat * (rstd * mean(g * xhat)),
 *               dw_part += dy * xhat,  db_part += dy;
 *   RMSNorm (FASTLN_RMS; mean is NULL, db_part unused):
 *               xhat = x * rstd,  dx = rstd * g - xhat * (rstd * mean(g * xhat)),
 *   and with the fused add, dx += ds, the incoming gradient of the sum, when ds is not NULL.
 *
 * The saved mean is only the pivot: the first sweep also measures mean(x - pivot), so a mean that
 * was rounded to float32 (or is off for any reason) still gives the gradient at the true mean. */
static TARGET void NAME(norm_bwd)(const D *restrict dy, const D *restrict x,
                                  const T *restrict mean, const T *restrict rstd,
                                  const T *restrict w, const D *restrict ds, D *restrict dx,
                                  double *restrict dw_part, double *restrict db_part,
                                  Py_ssize_t rows, Py_ssize_t n, int flags)
{
    const int rms = (flags & FASTLN_RMS) != 0, has_ds = ds != NULL;
    /* Groups of GROUP_ROWS rows while their x and dy fit in a 32 KiB level-1 cache with room to
     * spare (float32 rows of up to 768 values), else of 2: the second sweep then reads them from
     * there. Measured on Zen 4, one thread: 2-row groups take 0.7x the time of 4-row ones on
     * cached rows of 1024 to 12288 float32 values. Data too large for the cache (FASTLN_STREAM)
     * goes in groups of 2 whatever its rows, the next group fetched while one is computed (see
     * fetch_ahead). Zen 3 (AVX2), against 4-row groups of short rows (float32 and float64
     * LayerNorm ones fetched two groups ahead, RMSNorm ones not fetched), from Python, two
     * threads: float32 LayerNorm 16384 x 512 0.6-0.8x the time, 32768 x 256 0.75-0.85x,
     * 8192 x 768 the same, RMSNorm 8192 x 768 0.9x, 16384 x 512 0.85x; one thread: LayerNorm
     * 16384 x 768 0.92x, RMSNorm 0.86-0.89x, float64 8192 x 384 the same, float16 65536 x 1024
     * 0.55-0.6x, bfloat16 32768 x 1024 0.75x, float16 16384 x 768 0.85-0.95x. (Before 2-row
     * groups were fetched ahead, 4-row groups had taken 0.85x their time on float32 8192 x 768
     * from memory on Zen 4, and fetching 4-row groups ahead 0.65x the time of not fetching
     * them on Zen 5; neither machine measured this choice.) */
    /* The first sweep of a row reads it from level 2 or 3 and the second is bound by its
     * stores, so overlapping them looks worth it; but forming the next group's sums within
     * this group's second sweep took 1.2-1.5x the time (Zen 4, one thread, cached float32 rows
     * of 1024, C harness, with the sums of one row or two: GCC ran out of registers), and the
     * sums of a group's two rows in one sweep, the weight loaded once for both, the same. */
    const int short_rows = (size_t)n * sizeof(D) * 2 * GROUP_ROWS <= 24576;
    /* Rows a multiple of 4 KiB long from memory go one at a time. Every row's column j then
     * falls in the same set of the 8-way level-1 cache: a group of 2 and the next group, fetched
     * ahead, need 8 lines of x and dy there, and the stage and the weight more, which is likely
     * why such rows took 1.2x the time per value of rows of 768, 1280 or 1536 in groups of 2
     * (Zen 3, C harness of the kernel, two threads). From Python, two threads, against groups of
     * 2: float32 LayerNorm 16384 x 1024 0.78-0.88x the time, 4096 x 4096 0.83x, 1024 x 8192
     * 0.81-0.83x, RMSNorm 16384 x 1024 0.79-0.87x, float64 16384 x 1024 0.83-0.85x, 16384 x 512
     * 0.67-0.89x, float16 and bfloat16 8192 x 2048 0.63-0.86x (16-bit rows of 4 KiB now stream:
     * see wc_conflict). Rows of 768, 1280 and 1536 took 1.0-1.15x the time one at a time in the
     * harness, and cached rows of 1024 1.05-1.1x, so they keep their groups. */
    const int one_row = (flags & FASTLN_STREAM) && ((size_t)n * sizeof(D)) % 4096 == 0;
    const int group = one_row ? 1 : short_rows && !(flags & FASTLN_STREAM) ? GROUP_ROWS : 2;
    /* Rows of a whole number of vectors (W values: a register of T, half one of 16-bit data), so
     * that every row has the same alignment: the second sweep's vectors start at column `head`,
     * where dy is aligned to a vector (dx when streaming: streaming stores need it), the columns
     * outside them done apart (see `edges`). x and dx placed alike (NumPy's large arrays all sit 16
     * bytes past a page, fastln's fresh dx at the offset of dy) are then aligned too. Zen 5,
     * float32 rows of 1024, one thread: all three 16 bytes off a 64-byte boundary took 1.3x the
     * time of aligned before, 1.15x now. On Zen 4 (one thread, cached float32 64 x 1024, C harness)
     * they took 1.3x the time 16 or 48 bytes off and 1.13x 32 bytes off, where the 512-bit
     * accesses, which it splits into 256-bit halves, cross no cache line: the first sweep's loads
     * from column 0 cost about half of it and the edges the rest. That sweep's vectors formed from
     * aligned loads by two-source permutes (vpermt2ps; the same values) took 0.98-1.0x the time,
     * though 0.8x in a loop of its own; aligned loads with the lanes taken as they come
     * (row_grad_sums_at, with the weight copied into place) 0.87-0.9x. Edges computed after
     * bwd_cols, or adding to the stage as whole vectors, and head 0 (no edges, every access off)
     * took 0.98-1.1x the time. 16-bit data that does not stream lost nothing to misalignment,
     * and its columns one at a time cost more, so it starts at 0. The first sweep sums the
     * same values in the same order wherever the arrays are, so that the row sums, and with
     * them the result, do not depend on it. Rows whose streamed dx would make the CPU
     * flush its write-combining buffers half full (wc_conflict) are written with plain stores. */
    const Py_ssize_t vec_bytes = W * (Py_ssize_t)sizeof(D);
    const int same_rows = (n * (Py_ssize_t)sizeof(D)) % vec_bytes == 0;
    const int stream = (flags & FASTLN_STREAM) && same_rows &&
                       !NAME(wc_conflict)(dy, x, ds, dx, n, group, short_rows);
    const uintptr_t anchor = stream ? (uintptr_t)dx : (uintptr_t)dy;
    Py_ssize_t head = same_rows && (sizeof(D) == sizeof(T) || stream)
                          ? (Py_ssize_t)((vec_bytes - anchor % vec_bytes) % vec_bytes / sizeof(D))
                          : 0;
    head = head < n ? head : n;
    const Py_ssize_t vec_end = head + (n - head) / W * W;
    const double inv_n = 1.0 / (double)n;
    /* Rows from memory: while bwd_cols computes a group from the cache, the hardware
     * prefetcher, which follows the loads that miss, has none to follow, and the memory idles
     * until the next group's first sweep waits for it. bwd_cols fetches the next group instead.
     * Zen 3, one thread: 0.65-0.75x the time on float32 65536 x 1024, 4096 x 4096 and
     * 1024 x 8192, and on float64 16384 x 1024; fetching two groups ahead, or into level 1 on
     * rows of 8192, gained less. 16-bit rows do so where they are not short: Zen 4, two threads,
     * C harness, against the first sweep fetching 4 KiB ahead (as it did for all 16-bit rows),
     * float16 and bfloat16 LayerNorm rows of 1600 to 16384 values took 0.71-0.92x the time
     * (4096 x 4096, 1024 x 8192, 8192 x 2048, 4096 x 3000, 2048 x 5120, 8192 x 1600,
     * 1024 x 16384), RMSNorm 0.70x; short rows (768 and 1024 values) 1.2-1.6x, so they keep the
     * first sweep's fetch. Both fetches at once gained no more than the groups' alone. */
    const int fetch_ahead = (flags & FASTLN_STREAM) && (sizeof(D) == sizeof(T) || !short_rows);
    /* 16-bit short rows too large for the cache: the first sweep fetches 4 KiB ahead (as the
     * forward's statistics sweep does): 0.8x the time on 4096 x 4096 and 1024 x 8192 float16
     * and bfloat16 (Zen 5, one thread, when all 16-bit rows did). float32 gained nothing. */
    const Py_ssize_t ahead = (flags & FASTLN_STREAM) && !fetch_ahead ? 4096 : 0;
    /* The dweight and dbias shares are summed in float32 over STAGE_ROWS rows, in two rows stw
     * and stb of the level-1 cache, before they are added to the double partials. Adding each
     * group's shares there (a conversion, and a read and a write of two cache lines per vector)
     * made the whole backward take 1.2-1.55x as long on rows that stay in the cache (Zen 5, one
     * thread: float32 rows of 768 and 1024, float16 and bfloat16 rows of 1024). Short float32
     * rows from memory, whose groups are fetched ahead, took longer with the stage (Zen 5, in
     * 4-row groups: 8192 x 768 1.7x, 1.3x with two processes sharing memory; Zen 3, in 2-row
     * groups: LayerNorm 16384 x 768 1.1x, RMSNorm the same), so they add each group's shares to
     * the partials, as float64 and float32 without memory for the stage do. Blocks of one
     * group need no stage: the result is the same.
     *
     * The stage's column `head` sits 1.5 KiB past that of the array the sweep aligns to (modulo
     * 4 KiB; stb 1 KiB further), on a cache line: a load whose address agrees with an earlier
     * store's in the low 12 bits waits for it, and rows of 1024 float32 values all agree. */
    /* The weight, where it lies at another offset from a 64-byte boundary than x, copied to
     * x's (the same values, so the same bits), so that both sweeps load it aligned wherever they
     * load x aligned: row_grad_sums_at, and the second sweep, whose vectors start where dy is
     * aligned, as x is in NumPy's large arrays. Zen 4, one thread, C harness, float32 64 x 1024
     * with x, dy and dx 16 bytes off, the weight 0 or 48 bytes off: 0.87-0.89x the time of the
     * sweeps before row_grad_sums_at (which alone gave 0.94x there). With the copy two rows of
     * 768 took 1.18x the time, so blocks of fewer than 8 rows go without. */
    void *wbuf = NULL;
    if (FASTLN_ALIGNED_SUMS && same_rows && rows >= 8 && n >= W &&
        ((uintptr_t)w - (uintptr_t)x) % 64 != 0 && (uintptr_t)x % sizeof(T) == 0 &&
        (wbuf = malloc((size_t)n * sizeof(T) + 128)) != NULL) {
        T *wc = (T *)((((uintptr_t)wbuf + 63) / 64 * 64) + (uintptr_t)x % 64);
        memcpy(wc, w, (size_t)n * sizeof(T));
        w = wc;
    }
    T *stw = NULL, *stb = NULL;
    void *stage = NULL;
    const size_t stage_row = ((size_t)n * sizeof(T) + 4095) / 4096 * 4096;
    if (sizeof(T) < sizeof(double) && rows > group && !(fetch_ahead && short_rows))
        stage = malloc(2 * stage_row + 3 * 4096);
    if (stage != NULL) {
        const uintptr_t col = (uintptr_t)(stream ? dx : dy) + head * sizeof(D);
        char *page = (char *)(((uintptr_t)stage + 64 + 4095) / 4096 * 4096);
        stw = (T *)(page + (col + 1536) % 4096 / 64 * 64) - head;
        stb = (T *)((char *)stw + stage_row + 1024);
        memset(stw, 0, (size_t)n * sizeof(T));
        memset(stb, 0, (size_t)n * sizeof(T));     /* RMSNorm's scalar columns add to it too */
    }
    /* The columns before `head` and after the last whole vector (the edges) are computed as
     * parts of whole vectors (bwd_edge) wherever the row holds one. Done one value at a time,
     * they (8 of 768 columns at each end of float16 rows 16 bytes off a 32-byte boundary, as
     * NumPy places large arrays) made the streaming backward take 1.45x the time of rows that
     * have none (Zen 5, one thread). Their dx is written before bwd_cols writes the group's
     * vectors: with plain stores of the whole vectors, over columns that bwd_cols then writes
     * with the same values; or, where rows stream (seams), as one streamed vector per pair of
     * rows: a row's tail (W - head columns, as n is a multiple of W) and the next row's head
     * fill the aligned vector between them, gathered in `pair` (pair[r][0]: row r - 1's tail
     * vector, pair[r][1]: row r's head vector; the group's last tail waits in pair[0][0] for the
     * next group). Written with plain stores into lines that the rest of the row streams, or
     * streamed long before the other half of their line, the edges made it take 1.2x the time.
     * Only the block's first head and last tail are written with plain stores. On Zen 4 (C
     * harness, one thread, float32 64 x 1024, every array 16 bytes off) the edges cost 0.55 ns
     * of the backward's 4.2 per 16 values (3.6 without them), about half of it in their dx
     * stores; reading and writing only their own lanes, with masked loads and stores that cross
     * no cache line and leave bwd_cols' columns alone, took 1.0-1.02x the time (float64 0.98x). */
    const int edges = n >= W && W > 1 && (head > 0 || vec_end < n);
    const int seams = stream && head > 0;
    const size_t head_bytes = (size_t)head * sizeof(D), tail_bytes = (size_t)(n - vec_end) *
                                                                       sizeof(D);
    D pair[GROUP_ROWS + 1][2][W];
    for (Py_ssize_t r0 = 0; r0 < rows; r0 += group) {
        const int nr = rows - r0 < group ? (int)(rows - r0) : group;
        if (stw != NULL && r0 > 0 && r0 % STAGE_ROWS == 0) {
            NAME(flush_stage)(stw, dw_part, head, vec_end, n, 1);
            if (!rms)
                NAME(flush_stage)(stb, db_part, head, vec_end, n, 1);
        }
        /* Per row: the pivot, rs, nsh, nc and nrmg of bwd_cols. */
        T kc[5][GROUP_ROWS];
        int exact[GROUP_ROWS], any_exact = 0;
        for (int r = 0; r < nr; r++) {
            const Py_ssize_t off = (r0 + r) * n;
            double sums[3];
            const T pivot = rms ? (T)0 : mean[r0 + r], rs = rstd[r0 + r];
            const double rsd = (double)rs;
            if (rms)
                NAME(row_grad_sums)(x + off, dy + off, w, n, 0, ahead, 1, sums);
            else
                NAME(row_grad_sums)(x + off, dy + off, w, n, pivot, ahead, 0, sums);
            /* A LayerNorm row of one value has dx = 0, which the double sweep gives exactly. */
            exact[r] = (n == 1 && !rms) ||
                       (sizeof(T) < sizeof(double) &&
                        !(rsd > 0x1p-60 && rsd < 0x1p60 && fabs(sums[2]) < 0x1p100));
            any_exact |= exact[r];
            const double sh = rms ? 0.0 : sums[0] * inv_n;     /* true mean - pivot */
            const double mg = rms ? 0.0 : sums[1] * inv_n;
            kc[0][r] = pivot;
            kc[1][r] = rs;
            kc[2][r] = (T)(-sh * rsd);
            /* rstd^2 over- or underflows double where rstd is beyond 2^+-511 (float64 rows
             * of such spreads): rstd * (rstd * ...) then, which stays in range. */
            const double proj = sums[2] - sh * sums[1];
            kc[3][r] = (T)(rsd > 0x1p-500 && rsd < 0x1p500 ? -(rsd * rsd * proj * inv_n)
                                                           : -(rsd * (rsd * proj * inv_n)));
            kc[4][r] = (T)(-rsd * mg);
        }
        const Py_ssize_t off0 = r0 * n;
        const D *dsg = has_ds ? ds + off0 : NULL;
        /* Rows the T sweep cannot take first, whole: a seam may hold their head or tail. */
        for (int r = 0; any_exact && r < nr; r++)
            if (exact[r]) {
                const Py_ssize_t off = (r0 + r) * n;
                NAME(bwd_row_exact)(dy + off, x + off, (double)kc[0][r], (double)kc[1][r], w,
                                    has_ds ? ds + off : NULL, dx + off, dw_part, db_part, n,
                                    rms);
            }
        if (edges) {
            const Py_ssize_t ostride = seams ? 2 * W : n;
            if (head > 0)
                NAME(bwd_edge)(dy + off0, x + off0, w, dsg, seams ? pair[0][1] : dx + off0,
                               ostride, stw, stb, dw_part, db_part, n, 0, 0, (int)head, nr,
                               exact, kc, rms, has_ds);
            if (vec_end < n)
                NAME(bwd_edge)(dy + off0, x + off0, w, dsg,
                               seams ? pair[1][0] : dx + off0 + (n - W), ostride, stw, stb,
                               dw_part, db_part, n, n - W, (int)(vec_end - (n - W)), W, nr,
                               exact, kc, rms, has_ds);
            for (int r = 0; seams && r < nr; r++) {
                D *row = dx + (r0 + r) * n;
                if (exact[r]) {                 /* written whole by bwd_row_exact */
                    memcpy(pair[r][1], row, head_bytes);
                    memcpy(pair[r + 1][0] + head, row + vec_end, tail_bytes);
                }
                if (r0 + r > 0)                 /* the seam that ends with this row's head */
                    NAME(stream_copy)(row - (n - vec_end), pair[r][0] + head);
                else
                    memcpy(row, pair[0][1], head_bytes);
            }
            if (seams)
                memcpy(pair[0][0], pair[nr][0], sizeof pair[0][0]);
        }
        /* On large data, the next group is fetched from memory (see fetch_ahead, bwd_cols). */
        const int fetch_next = fetch_ahead && r0 + 2 * group <= rows;
        const Py_ssize_t fetch_off = off0 + group * n;
        const D *ndy = fetch_next ? dy + fetch_off : NULL, *nx = fetch_next ? x + fetch_off : NULL;
        /* bwd_cols fetches the lines from column `head` on; each row's last line here, which
         * in rows off a line boundary (NumPy's large arrays sit 16 bytes past one) also holds
         * the next row's first columns, which no vector from `head` reaches. Missing them took
         * 1.25x the time (Zen 5, one thread, float32 8192 x 768 16 bytes off). */
        for (int r = 0; fetch_next && r < group; r++) {
            __builtin_prefetch(nx + r * n + n - 1, 0, 2);
            __builtin_prefetch(ndy + r * n + n - 1, 0, 2);
        }
#define FASTLN_COLS(NR, EXACT, STREAM, RMS, DS, STAGED)                                         \
    NAME(bwd_cols)(dy + off0, x + off0, w, dsg, dx + off0, stw, stb, dw_part, db_part, n, head,  \
                   vec_end, NR, EXACT, kc, STREAM, RMS, DS, STAGED, ndy, nx)
        /* The common case, a whole group with no exact rows, is compiled once per (group,
         * stream, RMS, ds, stage) with the row count a constant, so that the per-row constants
         * stay in registers and the row loop unrolls (testing for the stage at every vector
         * took 1.1-1.2x the time of the whole float32 RMSNorm backward on rows of 768). */
#define FASTLN_FULL_GROUP(NR, STAGED)                                                         \
    switch (stream | rms << 1 | has_ds << 2) {                                                \
    case 0: FASTLN_COLS(NR, NULL, 0, 0, 0, STAGED); break;                                   \
    case 1: FASTLN_COLS(NR, NULL, 1, 0, 0, STAGED); break;                                   \
    case 2: FASTLN_COLS(NR, NULL, 0, 1, 0, STAGED); break;                                   \
    case 3: FASTLN_COLS(NR, NULL, 1, 1, 0, STAGED); break;                                   \
    case 4: FASTLN_COLS(NR, NULL, 0, 0, 1, STAGED); break;                                   \
    case 5: FASTLN_COLS(NR, NULL, 1, 0, 1, STAGED); break;                                   \
    case 6: FASTLN_COLS(NR, NULL, 0, 1, 1, STAGED); break;                                   \
    default: FASTLN_COLS(NR, NULL, 1, 1, 1, STAGED); break;                                  \
    }
        const int full = nr == group && !any_exact;
        if (full && stw != NULL && group == GROUP_ROWS)
            FASTLN_FULL_GROUP(GROUP_ROWS, 1)
        else if (full && stw != NULL && group == 2)
            FASTLN_FULL_GROUP(2, 1)
        else if (full && stw != NULL)
            FASTLN_FULL_GROUP(1, 1)
        else if (full && group == GROUP_ROWS)
            FASTLN_FULL_GROUP(GROUP_ROWS, 0)
        else if (full && group == 2)
            FASTLN_FULL_GROUP(2, 0)
        else if (full)
            FASTLN_FULL_GROUP(1, 0)
        else
            FASTLN_COLS(nr, exact, stream, rms, has_ds, stw != NULL);
#undef FASTLN_FULL_GROUP
#undef FASTLN_COLS
        /* The columns before `head` and after the last whole vector, one at a time where the
         * row holds no whole vector (see `edges`). */
        for (Py_ssize_t k = 0; !edges && k < head + (n - vec_end); k++) {
            const Py_ssize_t j = k < head ? k : vec_end + (k - head);
            T dwa = 0, dba = 0;
            for (int r = 0; r < nr; r++) {
                if (exact[r])
                    continue;
                const Py_ssize_t off = (r0 + r) * n + j;
                const T dyv = NAME(ld1)(dy + off);
                const T xv = NAME(ld1)(x + off), rs = kc[1][r];
                const T xhat = rms ? xv * rs : NAME(fma1)(xv - kc[0][r], rs, kc[2][r]);
                const T d = NAME(fma1)(dyv * w[j], rs, NAME(fma1)(xhat, kc[3][r], kc[4][r]));
                NAME(st1)(dx + off, has_ds ? d + NAME(ld1)(ds + off) : d);
                dwa = NAME(fma1)(dyv, xhat, dwa);
                dba += dyv;
            }
            if (stw != NULL) {
                stw[j] += dwa;
                stb[j] += dba;
            } else {
                dw_part[j] += (double)dwa;
                db_part[j] += (double)dba;
            }
        }
    }
    if (seams && rows > 0)
        memcpy(dx + (rows - 1) * n + vec_end, pair[0][0] + head, tail_bytes);
    if (stw != NULL) {
        NAME(flush_stage)(stw, dw_part, head, vec_end, n, 0);
        if (!rms)
            NAME(flush_stage)(stb, db_part, head, vec_end, n, 0);
    }
    free(stage);
    free(wbuf);
    if (stream)
        FASTLN_SFENCE();
}

#ifndef FASTLN_HALF
/* parts[0:n] += parts[b*stride : b*stride + n] for b = 1, 2, ... in that order, then
 * out = parts[0:n]: the same sum for every thread count, because the blocks do not depend on it. */
static TARGET void NAME(sum_blocks)(double *restrict parts, Py_ssize_t nblocks, Py_ssize_t n,
                                    Py_ssize_t stride, T *restrict out)
{
    for (Py_ssize_t blk = 1; blk < nblocks; blk++) {
        const double *restrict part = parts + blk * stride;
        for (Py_ssize_t i = 0; i < n; i++)
            parts[i] += part[i];
    }
    for (Py_ssize_t i = 0; i < n; i++)
        out[i] = (T)parts[i];
}
#endif

#undef D
#undef FASTLN_SCRATCH_MAX
#undef FASTLN_ALIGNED_SUMS
#undef FASTLN_STS2
#undef FASTLN_F16
#undef V
#undef W
#undef HALF
#undef WIDE
#undef LANES
#undef LANES_OF_WIDE
#undef FASTLN_LANES_REDUCE
#undef FASTLN_SUM_STEP
#undef FASTLN_CHAN_STEP
#undef FASTLN_BY_KIND
