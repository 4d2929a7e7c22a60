/* Conversions between float32 and the 16-bit storage types, compiled once per SIMD path by
 * _rows.h (NAME(f) here gives f_<path>_half). float16 and bfloat16 data is converted a few rows
 * at a time into float32 scratch, normalized by the float32 kernels and converted back, so every
 * statistic and sum is float32 or wider.
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

static TARGET void NAME(f16_to_f32)(const uint16_t *restrict src, float *restrict dst,
                                    Py_ssize_t n)
{
    Py_ssize_t i = 0;
#if FASTLN_X86_DISPATCH && REGISTER_BYTES >= 32
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
#endif
    for (; i < n; i++)
        dst[i] = NAME(h2f)(src[i]);
}

static TARGET void NAME(f32_to_f16)(const float *restrict src, uint16_t *restrict dst,
                                    Py_ssize_t n)
{
    Py_ssize_t i = 0;
#if FASTLN_X86_DISPATCH && REGISTER_BYTES >= 32
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
#endif
    for (; i < n; i++)
        dst[i] = NAME(f2h)(src[i]);
}

/* bfloat16 is the top half of a float32: widening is a shift. Written as plain loops, which the
 * compiler vectorizes for each path. */
static TARGET void NAME(bf16_to_f32)(const uint16_t *restrict src, float *restrict dst,
                                     Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        const uint32_t bits = (uint32_t)src[i] << 16;
        memcpy(dst + i, &bits, sizeof bits);
    }
}

static TARGET void NAME(f32_to_bf16)(const float *restrict src, uint16_t *restrict dst,
                                     Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, src + i, sizeof bits);
        const int nan = (bits & 0x7fffffffu) > 0x7f800000u;
        /* Round to nearest even: add 0x7fff plus the lowest kept bit, then truncate. */
        const uint32_t rounded = bits + 0x7fffu + ((bits >> 16) & 1u);
        dst[i] = (uint16_t)((nan ? bits | 0x00400000u : rounded) >> 16);
    }
}
