/* Row kernels of fastln, written once and compiled once per (SIMD path, dtype) by _rows.h.
 *
 * The includer defines:
 *   T              element type (float or double)
 *   NAME(f)        the name of function f for this (path, dtype), e.g. f_avx2_f32
 *   TARGET         the function attribute that selects the instruction set ("" for baseline)
 *   LANES          independent accumulators per row: a multiple of the SIMD width in doubles
 *
 * Each kernel handles a block of `rows` contiguous rows of width n. Nothing here knows about
 * threads: _cpu.pyx splits rows into blocks. All statistics are accumulated in double.
 *
 * Accuracy: every row is centred on a pivot taken from the input's own values (the row's first
 * element in the forward, the saved mean in the backward). The difference x - pivot is exact for
 * the rows that matter (Sterbenz), so the statistics only see the spread of the row, never its
 * offset, and rows like 3e4 + 0.01 * randn keep all their digits.
 */

/* Moments of one row about the pivot k: *mean = mean(x - k), *m2 = sum((x - mean(x))^2).
 * Welford's update in each of LANES lanes (lane l sees elements l, l + LANES, ...), then the lanes
 * are merged pairwise with Chan's formula, then the tail elements are added one by one.
 * The order of every operation depends only on n, never on threads. */
static TARGET inline void NAME(row_moments)(const T *restrict x, Py_ssize_t n, double k,
                                              double *restrict mean_out, double *restrict m2_out)
{
    double mean[LANES], m2[LANES];
    const Py_ssize_t steps = n / LANES;
    Py_ssize_t count = 0;
    double mu = 0.0, q = 0.0;

    if (steps > 0) {
        for (int l = 0; l < LANES; l++) {
            mean[l] = 0.0;
            m2[l] = 0.0;
        }
        for (Py_ssize_t s = 0; s < steps; s++) {
            const T *restrict p = x + s * LANES;
            const double inv = 1.0 / (double)(s + 1);
            for (int l = 0; l < LANES; l++) {
                const double d = (double)p[l] - k;
                const double delta = d - mean[l];
                mean[l] += delta * inv;
                m2[l] += delta * (d - mean[l]);
            }
        }
        /* Chan's merge of equal-sized halves: n_a = n_b, so mean = (a + b) / 2 and
         * M2 = M2_a + M2_b + delta^2 * n_a / 2. */
        double half_count = (double)steps;
        for (int width = LANES / 2; width >= 1; width /= 2) {
            for (int l = 0; l < width; l++) {
                const double delta = mean[l + width] - mean[l];
                mean[l] = 0.5 * (mean[l] + mean[l + width]);
                m2[l] = (m2[l] + m2[l + width]) + delta * delta * (0.5 * half_count);
            }
            half_count *= 2.0;
        }
        mu = mean[0];
        q = m2[0];
        count = steps * LANES;
    }
    for (Py_ssize_t i = count; i < n; i++) {
        const double d = (double)x[i] - k;
        const double delta = d - mu;
        mu += delta / (double)(i + 1);
        q += delta * (d - mu);
    }
    *mean_out = mu;
    *m2_out = q;
}

/* Forward over a block: y = (x - mean) * rstd * w + b, and mean and rstd per row when asked.
 * y may be x itself (in place): each row is read in full before any of it is written. */
static TARGET void NAME(ln_fwd)(const T *x, const T *restrict w, const T *restrict b, T *y,
                                T *restrict mean, T *restrict rstd, Py_ssize_t rows,
                                Py_ssize_t n, double eps)
{
    for (Py_ssize_t r = 0; r < rows; r++) {
        const T *xr = x + r * n;
        T *yr = y + r * n;
        const T pivot = xr[0];
        double mu, m2;
        NAME(row_moments)(xr, n, (double)pivot, &mu, &m2);
        /* A finite float64 row whose spread exceeds ~1e154 overflows m2: say so with NaN
         * rather than return the bias as if the row were constant. */
        const double rs = m2 > DBL_MAX ? NAN : 1.0 / sqrt(m2 / (double)n + eps);
        if (mean != NULL) {
            mean[r] = (T)((double)pivot + mu);
            rstd[r] = (T)rs;
        }
        /* sqrt(m2) bounds every |x - mean|. When it or rstd is far outside float32's comfortable
         * range (values near FLT_MAX, subnormal spreads, eps = 0 on a near-constant row), the
         * row is finished in double so that nothing overflows or loses digits; otherwise in T. */
        const double spread = sqrt(m2);
        if (sizeof(T) < sizeof(double) &&
            !(spread < 0x1p100 && spread > 0x1p-100 && rs < 0x1p100)) {
            for (Py_ssize_t i = 0; i < n; i++) {
                const double centred = ((double)xr[i] - (double)pivot) - mu;
                yr[i] = (T)(centred * rs * (double)w[i] + (double)b[i]);
            }
            continue;
        }
        /* (x - pivot) is exact; subtracting the small remainder mu rounds once. */
        const T mu_t = (T)mu, rs_t = (T)rs;
        for (Py_ssize_t i = 0; i < n; i++) {
            const T centred = (xr[i] - pivot) - mu_t;
            yr[i] = centred * (rs_t * w[i]) + b[i];
        }
    }
}

/* Backward over a block, fused: one sweep of reductions per row, one sweep that writes dx and
 * adds this row's share of dweight and dbias to the block's double-precision partials.
 *
 *   xhat = (x - mean) * rstd,  g = dy * w,
 *   dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),
 *   dw_part += dy * xhat,  db_part += dy.
 *
 * The saved mean is only the pivot: the first sweep also measures mean(x - pivot), so a mean that
 * was rounded to float32 (or is off for any reason) still gives the gradient at the true mean. */
static TARGET void NAME(ln_bwd)(const T *restrict dy, const T *restrict x,
                                const T *restrict mean, const T *restrict rstd,
                                const T *restrict w, T *restrict dx,
                                double *restrict dw_part, double *restrict db_part,
                                Py_ssize_t rows, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        dw_part[i] = 0.0;
        db_part[i] = 0.0;
    }
    const double inv_n = 1.0 / (double)n;
    for (Py_ssize_t r = 0; r < rows; r++) {
        const T *restrict xr = x + r * n;
        const T *restrict dyr = dy + r * n;
        T *restrict dxr = dx + r * n;
        const double k = (double)mean[r], rs = (double)rstd[r];

        double sd[LANES], sg[LANES], sgd[LANES];
        for (int l = 0; l < LANES; l++) {
            sd[l] = 0.0;
            sg[l] = 0.0;
            sgd[l] = 0.0;
        }
        const Py_ssize_t body = n - n % LANES;
        for (Py_ssize_t s = 0; s < body; s += LANES) {
            for (int l = 0; l < LANES; l++) {
                const double d = (double)xr[s + l] - k;
                const double g = (double)dyr[s + l] * (double)w[s + l];
                sd[l] += d;
                sg[l] += g;
                sgd[l] += g * d;
            }
        }
        for (int width = LANES / 2; width >= 1; width /= 2) {
            for (int l = 0; l < width; l++) {
                sd[l] += sd[l + width];
                sg[l] += sg[l + width];
                sgd[l] += sgd[l + width];
            }
        }
        double sum_d = sd[0], sum_g = sg[0], sum_gd = sgd[0];
        for (Py_ssize_t i = body; i < n; i++) {
            const double d = (double)xr[i] - k;
            const double g = (double)dyr[i] * (double)w[i];
            sum_d += d;
            sum_g += g;
            sum_gd += g * d;
        }

        const double shift = sum_d * inv_n;              /* true mean - pivot */
        const double mean_g = sum_g * inv_n;
        const double mean_gxhat = rs * (sum_gd - shift * sum_g) * inv_n;
        for (Py_ssize_t i = 0; i < n; i++) {
            const double dyi = (double)dyr[i];
            const double xhat = (((double)xr[i] - k) - shift) * rs;
            dxr[i] = (T)(rs * ((dyi * (double)w[i] - mean_g) - xhat * mean_gxhat));
            dw_part[i] += dyi * xhat;
            db_part[i] += dyi;
        }
    }
}

/* parts[0:n] += parts[b*n : (b+1)*n] for b = 1, 2, ... in that order, then out = parts[0:n]:
 * the same sum for every thread count, because the blocks do not depend on it. */
static TARGET void NAME(sum_blocks)(double *restrict parts, Py_ssize_t nblocks, Py_ssize_t n,
                                    T *restrict out)
{
    for (Py_ssize_t blk = 1; blk < nblocks; blk++) {
        const double *restrict part = parts + blk * n;
        for (Py_ssize_t i = 0; i < n; i++)
            parts[i] += part[i];
    }
    for (Py_ssize_t i = 0; i < n; i++)
        out[i] = (T)parts[i];
}
