/* float16 and bfloat16 <-> float32, compiled once per SIMD path by _rows.h (NAME(f) here gives
 * f_<path>_half). The kernels of _rows_impl.h instantiated for 16-bit data (FASTLN_HALF) widen
 * every value they load with these and round every value they store, so all arithmetic, every
 * statistic and every sum is float32 or wider.
 *
 * Rounding is to nearest, ties to even, as NumPy's and ml_dtypes' casts do; NaN stays NaN (quiet)
 * and overflow gives inf. The AVX2 and AVX-512 paths use the F16C instructions for float16.
 */

/* float16 bits -> float32, one value. */
static TARGET inline float NAME(h2f)(uint16_t h)
{
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu,
                   man = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1f) {                                     /* inf, NaN */
        bits = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {                                 /* normal: rebias 15 -> 127 */
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    } else {                                               /* zero, subnormal: man * 2^-24 */
        float f = (float)man * 0x1p-24f;
        memcpy(&bits, &f, sizeof bits);
        bits |= sign;
    }
    float out;
    memcpy(&out, &bits, sizeof out);
    return out;
}

/* float32 -> float16 bits, one value, rounded to nearest even. */
static TARGET inline uint16_t NAME(f2h)(float f)
{
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    const uint16_t sign = (uint16_t)((bits >> 16) & 0x8000u);
    const uint32_t mag = bits & 0x7fffffffu;
    if (mag > 0x7f800000u)                                 /* NaN: keep it quiet */
        return sign | 0x7e00u | (uint16_t)((mag >> 13) & 0x3ffu);
    if (mag >= 0x477ff000u)                                /* >= 65520 rounds to inf */
        return sign | 0x7c00u;
    if (mag < 0x38800000u) {                               /* below 2^-14: subnormal or zero */
        /* Adding 0.5 puts the value's 2^-24 units in the low mantissa bits, rounded by the FPU
         * to nearest even. */
        float a;
        memcpy(&a, &mag, sizeof a);
        a += 0.5f;
        uint32_t abits;
        memcpy(&abits, &a, sizeof abits);
        return sign | (uint16_t)(abits - 0x3f000000u);
    }
    /* Normal: rebias 127 -> 15 and drop 13 mantissa bits, rounding to nearest even; a carry out
     * of the mantissa correctly bumps the exponent. */
    const uint32_t odd = (mag >> 13) & 1u;
    return sign | (uint16_t)((mag - (112u << 23) + 0xfffu + odd) >> 13);
}

/* bfloat16 is the top half of a float32: widening is a shift. */
static TARGET inline float NAME(bf2f)(uint16_t h)
{
    const uint32_t bits = (uint32_t)h << 16;
    float out;
    memcpy(&out, &bits, sizeof out);
    return out;
}

/* float32 -> bfloat16 bits, rounded to nearest even: add 0x7fff plus the lowest kept bit, then
 * truncate; NaN keeps its top bits and is made quiet. */
static TARGET inline uint16_t NAME(f2bf)(float f)
{
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((bits | 0x00400000u) >> 16);
    return (uint16_t)((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

#if FASTLN_VECTOR_EXT
/* Whole vectors of REGISTER_BYTES / 4 values. */
typedef float NAME(fvec) __attribute__((vector_size(REGISTER_BYTES), aligned(4), may_alias));
typedef uint32_t NAME(uvec) __attribute__((vector_size(REGISTER_BYTES), aligned(4), may_alias));
typedef int32_t NAME(ivec) __attribute__((vector_size(REGISTER_BYTES), aligned(4)));
typedef uint16_t NAME(hvec) __attribute__((vector_size(REGISTER_BYTES / 2), aligned(2),
                                           may_alias));

static TARGET inline NAME(fvec) NAME(vload_f16)(const uint16_t *p)
{
#if FASTLN_X86_DISPATCH && REGISTER_BYTES == 64
    return (NAME(fvec))_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
#elif FASTLN_X86_DISPATCH && REGISTER_BYTES == 32
    return (NAME(fvec))_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
#else
    NAME(fvec) v;
    for (int l = 0; l < REGISTER_BYTES / 4; l++)
        v[l] = NAME(h2f)(p[l]);
    return v;
#endif
}

/* A vector's values rounded to 16 bits, as one register of half the width (or, generically,
 * a vector of uint16_t), for hstore. */
#if FASTLN_X86_DISPATCH && REGISTER_BYTES == 64
typedef __m256i NAME(hbits);
#elif FASTLN_X86_DISPATCH && REGISTER_BYTES == 32
typedef __m128i NAME(hbits);
#else
typedef NAME(hvec) NAME(hbits);
#endif

/* Stores h to p; with nt, past the cache (a non-temporal store; p then aligned to
 * REGISTER_BYTES / 2), except on the baseline path. */
static TARGET inline void NAME(hstore)(uint16_t *p, NAME(hbits) h, const int nt)
{
#if FASTLN_X86_DISPATCH && REGISTER_BYTES == 64
    if (nt)
        _mm256_stream_si256((__m256i *)p, h);
    else
        _mm256_storeu_si256((__m256i *)p, h);
#elif FASTLN_X86_DISPATCH && REGISTER_BYTES == 32
    if (nt)
        _mm_stream_si128((__m128i *)p, h);
    else
        _mm_storeu_si128((__m128i *)p, h);
#else
    (void)nt;
    *(NAME(hvec) *)p = h;
#endif
}

static TARGET inline NAME(hbits) NAME(vpack_f16)(NAME(fvec) v)
{
#if FASTLN_X86_DISPATCH && REGISTER_BYTES == 64
    return _mm512_cvtps_ph((__m512)v, _MM_FROUND_TO_NEAREST_INT);
#elif FASTLN_X86_DISPATCH && REGISTER_BYTES == 32
    return _mm256_cvtps_ph((__m256)v, _MM_FROUND_TO_NEAREST_INT);
#else
    NAME(hvec) h;
    for (int l = 0; l < REGISTER_BYTES / 4; l++)
        h[l] = NAME(f2h)(v[l]);
    return h;
#endif
}

/* GCC widens a generic vector of 16-bit values in 128-bit pieces (extract, extend, insert): the
 * intrinsics widen a whole register in one or two instructions. AVX-512 puts value i in the
 * high half of lane i and zeroes the low halves in one word permutation, instead of widening
 * and shifting: Zen 5, one thread, the bfloat16 forward took 0.93x the time on cached rows of
 * 1024 (with the narrowing below, 0.85x). */
static TARGET inline NAME(fvec) NAME(vload_bf16)(const uint16_t *p)
{
#if FASTLN_X86_DISPATCH && REGISTER_BYTES == 64
    const __m512i to_high = _mm512_set_epi16(15, 0, 14, 0, 13, 0, 12, 0, 11, 0, 10, 0, 9, 0, 8,
                                             0, 7, 0, 6, 0, 5, 0, 4, 0, 3, 0, 2, 0, 1, 0, 0, 0);
    return (NAME(fvec))_mm512_maskz_permutexvar_epi16(
        0xAAAAAAAAu, to_high, _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)p)));
#elif FASTLN_X86_DISPATCH && REGISTER_BYTES == 32
    return (NAME(fvec))_mm256_slli_epi32(
        _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16);
#else
    const NAME(uvec) u = __builtin_convertvector(*(const NAME(hvec) *)p, NAME(uvec)) << 16;
    return (NAME(fvec))u;
#endif
}

/* The bits of v rounded to bfloat16 in their high halves (to nearest even; the low halves are
 * left over), and those of NaN made quiet, to select where v is NaN. */
static TARGET inline NAME(uvec) NAME(bf16_rounded)(NAME(fvec) v)
{
    const NAME(uvec) u = (NAME(uvec))v;
    return u + 0x7fffu + ((u >> 16) & 1u);
}

static TARGET inline NAME(uvec) NAME(bf16_quiet)(NAME(fvec) v)
{
    return (NAME(uvec))v | 0x00400000u;
}

/* v rounded to bfloat16. The x86 paths find NaN with an unordered compare (a mask register on
 * AVX-512) and narrow the high halves in one or two instructions (AVX-512: a word permutation,
 * instead of a shift and vpmovdw); written generically, GCC does neither.
 *
 * The avx512bf16 path (FASTLN_NATIVE_BF16) rounds with AVX512_BF16's vcvtneps2bf16: nearest,
 * ties to even, NaN made quiet as above, but subnormal float32 values taken as zero. Vectors
 * holding any (vfpclassps) take the sequence above. Zen 5, one thread: the bfloat16 forward
 * took 0.94x the time of the permutations on cached rows of 1024, 0.85x on 8192 x 768 from
 * memory; the backward 0.9x. */
static TARGET inline NAME(hbits) NAME(vpack_bf16)(NAME(fvec) v)
{
#if FASTLN_X86_DISPATCH && REGISTER_BYTES == 64
#if FASTLN_NATIVE_BF16
    if (__builtin_expect(_mm512_fpclass_ps_mask((__m512)v, 0x20) == 0, 1))   /* no subnormal */
        return (__m256i)_mm512_cvtneps_pbh((__m512)v);
#endif
    const __m512i bits = _mm512_mask_blend_epi32(
        _mm512_cmp_ps_mask((__m512)v, (__m512)v, _CMP_UNORD_Q), (__m512i)NAME(bf16_rounded)(v),
        (__m512i)NAME(bf16_quiet)(v));
    const __m512i high_halves = _mm512_set_epi16(
        31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1, 31, 29, 27, 25, 23, 21, 19, 17,
        15, 13, 11, 9, 7, 5, 3, 1);
    return _mm512_castsi512_si256(_mm512_permutexvar_epi16(high_halves, bits));
#elif FASTLN_X86_DISPATCH && REGISTER_BYTES == 32
    const __m256i high = _mm256_srli_epi32(
        _mm256_blendv_epi8((__m256i)NAME(bf16_rounded)(v), (__m256i)NAME(bf16_quiet)(v),
                           (__m256i)_mm256_cmp_ps((__m256)v, (__m256)v, _CMP_UNORD_Q)),
        16);
    return _mm_packus_epi32(_mm256_castsi256_si128(high), _mm256_extracti128_si256(high, 1));
#else
    const NAME(uvec) u = (NAME(uvec))v;
    const NAME(uvec) nan = (NAME(uvec))((NAME(ivec))(u & 0x7fffffffu) > 0x7f800000);
    const NAME(uvec) bits = (NAME(bf16_rounded)(v) & ~nan) | (NAME(bf16_quiet)(v) & nan);
    return __builtin_convertvector(bits >> 16, NAME(hvec));
#endif
}

#if FASTLN_X86_DISPATCH && REGISTER_BYTES == 64 && FASTLN_NATIVE_BF16
/* a and c rounded to bfloat16 as vpack_bf16 rounds them, stored to p and p + 16 as one 512-bit
 * store: vcvtne2ps2bf16 rounds both vectors in the time vcvtneps2bf16 takes for one (Zen 4:
 * 1.53 against 1.48 cycles in a loop of their own). Vectors holding subnormals go one by one. */
static TARGET inline void NAME(vstore2_bf16)(uint16_t *p, NAME(fvec) a, NAME(fvec) c)
{
    if (__builtin_expect((_mm512_fpclass_ps_mask((__m512)a, 0x20) |
                          _mm512_fpclass_ps_mask((__m512)c, 0x20)) == 0, 1)) {
        _mm512_storeu_si512((void *)p, (__m512i)_mm512_cvtne2ps_pbh((__m512)c, (__m512)a));
        return;
    }
    NAME(hstore)(p, NAME(vpack_bf16)(a), 0);
    NAME(hstore)(p + 16, NAME(vpack_bf16)(c), 0);
}
#endif
#endif
