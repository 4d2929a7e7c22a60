// fastln's GPU kernels: LayerNorm and RMSNorm over the rows of a C-contiguous (rows, n) array,
// forward (optionally fused with a residual add) and fused backward, for float32 and float16
// data. Statistics, sums and partials are float32.
//
// CuPy compiles this file at run time with NVRTC, and CI compiles it with nvcc for sm_80 and
// sm_90, so it includes no header at all: float16 values are converted with PTX `cvt`, and only
// built-in vector types are used. The kernels are templates; fastln/_gpu.py names the
// instantiations it launches (`kernel_names()`) and chooses the launch sizes.
//
// How the work is laid out:
// - A *group* of G threads (G a multiple of 32) owns one row at a time. A block is one group
//   (G >= 64), or blockDim.x / 32 warps that each own a row (G == 32), for short rows.
// - Thread t of a group owns the vectors t, t + G, t + 2G, ... of its row: VEC elements each,
//   one or two 16-byte words (float4 / 8 halves) when VEC > 1, single elements when the row or
//   a pointer is not 16-byte aligned (VEC == 1).
// - The register kernels (`forward`, `backward`) hold the thread's share of the row in registers
//   (at most ELEMS values), so each input is read from memory once. Rows too long for that take
//   the *_stream kernels, which read the row again for each pass.
// - LayerNorm statistics are centred on a pivot, the row's first element, before any sum is
//   formed, so rows like 3e4 + 0.01 * randn keep their digits: each thread takes the mean and M2
//   of its own values about their own mean (two passes over registers), and the group merges
//   these with Chan's formula. The backward measures the saved mean's error again, as
//   fastln.reference.layer_norm_backward does, so a rounded mean costs no accuracy.
// - The backward writes one float32 row of dweight / dbias partials per group; `column_sum`
//   adds them in a fixed order. No atomics: the same input gives the same bits every time.
//
// Every global memory access goes through load/store helpers that call FASTLN_CHECK_ACCESS,
// which is empty here; the tests' CPU emulator defines it to check bounds and alignment.

#ifndef FASTLN_CHECK_ACCESS
#define FASTLN_CHECK_ACCESS(ptr, bytes)
#endif

namespace fastln {

// IEEE binary16 as stored in memory; all arithmetic on it is float32.
struct half_t {
    unsigned short bits;
};

__device__ __forceinline__ float to_float(float v) { return v; }

__device__ __forceinline__ float to_float(half_t v) {
#ifdef FASTLN_HOST_EMULATION
    return fastln_emu_half_to_float(v.bits);
#else
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v.bits));
    return f;
#endif
}

template <typename T> __device__ __forceinline__ T from_float(float v);

template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }

template <> __device__ __forceinline__ half_t from_float<half_t>(float v) {
    half_t h;
#ifdef FASTLN_HOST_EMULATION
    h.bits = fastln_emu_float_to_half(v);
#else
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h.bits) : "f"(v));
#endif
    return h;
}

// v rounded to T and back: x + residual as a T array holds it.
template <typename T> __device__ __forceinline__ float round_to(float v) {
    return to_float(from_float<T>(v));
}

// ---------------------------------------------------------------------------------------------
// Memory access

template <typename T> __device__ __forceinline__ float load1(const T* p, long long i) {
    FASTLN_CHECK_ACCESS(p + i, sizeof(T));
    return to_float(p[i]);
}

template <typename T> __device__ __forceinline__ void store1(T* p, long long i, float v) {
    FASTLN_CHECK_ACCESS(p + i, sizeof(T));
    p[i] = from_float<T>(v);
}

// How T packs into 32-bit words: values per word, and their conversion to and from float.
template <typename T> struct Words;

template <> struct Words<float> {
    enum { PER_WORD = 1 };
    __device__ static __forceinline__ void unpack(unsigned w, float* out) {
        out[0] = __uint_as_float(w);
    }
    __device__ static __forceinline__ unsigned pack(const float* in) {
        return __float_as_uint(in[0]);
    }
};

template <> struct Words<half_t> {
    enum { PER_WORD = 2 };
    __device__ static __forceinline__ void unpack(unsigned w, float* out) {
        half_t lo, hi;
        lo.bits = (unsigned short)(w & 0xffffu);
        hi.bits = (unsigned short)(w >> 16);
        out[0] = to_float(lo);
        out[1] = to_float(hi);
    }
    __device__ static __forceinline__ unsigned pack(const float* in) {
        return (unsigned)from_float<half_t>(in[0]).bits
               | ((unsigned)from_float<half_t>(in[1]).bits << 16);
    }
};

// VEC consecutive values at p, moved as 16-byte words (p must be 16-byte aligned).
template <int VEC, typename T> struct Vec {
    static_assert(VEC * sizeof(T) % 16 == 0, "a vector is a whole number of 16-byte words");
    enum { QUADS = VEC * sizeof(T) / 16, PER = Words<T>::PER_WORD };

    __device__ static __forceinline__ void load(const T* p, float* out) {
        FASTLN_CHECK_ACCESS(p, VEC * sizeof(T));
        const uint4* src = reinterpret_cast<const uint4*>(p);
#pragma unroll
        for (int k = 0; k < QUADS; ++k) {
            const uint4 q = src[k];
            Words<T>::unpack(q.x, out + (4 * k + 0) * PER);
            Words<T>::unpack(q.y, out + (4 * k + 1) * PER);
            Words<T>::unpack(q.z, out + (4 * k + 2) * PER);
            Words<T>::unpack(q.w, out + (4 * k + 3) * PER);
        }
    }

    // The raw words, unconverted (4 * QUADS of them).
    __device__ static __forceinline__ void load_words(const T* p, unsigned* out) {
        FASTLN_CHECK_ACCESS(p, VEC * sizeof(T));
        const uint4* src = reinterpret_cast<const uint4*>(p);
#pragma unroll
        for (int k = 0; k < QUADS; ++k) {
            const uint4 q = src[k];
            out[4 * k + 0] = q.x;
            out[4 * k + 1] = q.y;
            out[4 * k + 2] = q.z;
            out[4 * k + 3] = q.w;
        }
    }

    __device__ static __forceinline__ void store(T* p, const float* in) {
        FASTLN_CHECK_ACCESS(p, VEC * sizeof(T));
        uint4* dst = reinterpret_cast<uint4*>(p);
#pragma unroll
        for (int k = 0; k < QUADS; ++k) {
            uint4 q;
            q.x = Words<T>::pack(in + (4 * k + 0) * PER);
            q.y = Words<T>::pack(in + (4 * k + 1) * PER);
            q.z = Words<T>::pack(in + (4 * k + 2) * PER);
            q.w = Words<T>::pack(in + (4 * k + 3) * PER);
            dst[k] = q;
        }
    }
};

// The scalar fallback: unaligned rows or pointers.
template <typename T> struct Vec<1, T> {
    __device__ static __forceinline__ void load(const T* p, float* out) { out[0] = load1(p, 0); }
    // One value as the bits of a float (Held's format for VEC == 1).
    __device__ static __forceinline__ void load_words(const T* p, unsigned* out) {
        out[0] = __float_as_uint(load1(p, 0));
    }
    __device__ static __forceinline__ void store(T* p, const float* in) { store1(p, 0, in[0]); }
};

// A thread's share of a row (ELEMS values) kept as raw 32-bit words between two passes: two
// float16 values per register instead of one, converted again where they are used.
template <typename T, int VEC, int ELEMS> struct Held {
    enum { PER = VEC == 1 ? 1 : Words<T>::PER_WORD };
    unsigned w[ELEMS / PER];

    // Vector k of the share, read from p.
    __device__ __forceinline__ void load(const T* p, int k) {
        Vec<VEC, T>::load_words(p, w + k * VEC / PER);
    }

    __device__ __forceinline__ float operator[](int j) const {
        if (PER == 1) return __uint_as_float(w[j]);
        float two[2];
        Words<T>::unpack(w[j / PER], two);
        return two[j % PER];
    }
};

// Vector i of weight (all ones when there is none) or of bias (zeros).
template <int VEC, typename W>
__device__ __forceinline__ void load_weight(const W* weight, int i, float* out) {
    if (weight) {
        Vec<VEC, W>::load(weight + (long long)i * VEC, out);
    } else {
#pragma unroll
        for (int e = 0; e < VEC; ++e) out[e] = 1.0f;
    }
}

template <int VEC, typename W>
__device__ __forceinline__ void load_bias(const W* bias, int i, float* out) {
    if (bias) {
        Vec<VEC, W>::load(bias + (long long)i * VEC, out);
    } else {
#pragma unroll
        for (int e = 0; e < VEC; ++e) out[e] = 0.0f;
    }
}

// ---------------------------------------------------------------------------------------------
// Reductions over a group. Every thread of the group gets the same bits, so all of them
// normalize with the same statistics.

#define FASTLN_FULL_WARP 0xffffffffu

// The sum over the 32 lanes of a warp (butterfly: lanes i and i^m add the same two numbers).
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int m = 1; m < 32; m <<= 1) v += __shfl_xor_sync(FASTLN_FULL_WARP, v, m);
    return v;
}

// Sums K values over the group of G threads: a warp (G == 32) or the whole block. In a block
// each warp repeats the last step on the per-warp sums, so all get the same bits. `scratch` holds
// 3 * 32 floats of shared memory; it is free again when this returns.
template <int K> __device__ __forceinline__ void group_sum(float* v, int G, float* scratch) {
#pragma unroll
    for (int k = 0; k < K; ++k) v[k] = warp_sum(v[k]);
    if (G == 32) return;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = G >> 5;
    if (lane == 0) {
#pragma unroll
        for (int k = 0; k < K; ++k) scratch[k * 32 + warp] = v[k];
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < K; ++k) v[k] = warp_sum(lane < warps ? scratch[k * 32 + lane] : 0.0f);
    __syncthreads();  // before the next call overwrites scratch
}

// Count, mean and sum of squared deviations from the mean of some values.
struct Moments {
    float n, mean, m2;
};

// a and b merged (Chan, Golub and LeVeque). Both lanes of a shuffle pass the lower lane's
// moments as `a`, so both compute the same bits.
__device__ __forceinline__ Moments merge(Moments a, Moments b) {
    const float n = a.n + b.n;
    if (n == 0.0f) return a;
    const float delta = b.mean - a.mean, share = b.n / n;
    Moments r;
    r.n = n;
    r.mean = a.mean + delta * share;
    r.m2 = a.m2 + b.m2 + delta * delta * a.n * share;
    return r;
}

__device__ __forceinline__ Moments warp_merge(Moments s) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int m = 1; m < 32; m <<= 1) {
        Moments o;
        o.n = __shfl_xor_sync(FASTLN_FULL_WARP, s.n, m);
        o.mean = __shfl_xor_sync(FASTLN_FULL_WARP, s.mean, m);
        o.m2 = __shfl_xor_sync(FASTLN_FULL_WARP, s.m2, m);
        s = (lane & m) ? merge(o, s) : merge(s, o);
    }
    return s;
}

// One value's terms of the backward's row sums: c = x - saved mean, g = dy * weight.
template <bool RMS> __device__ __forceinline__ void backward_terms(float* s, float c, float g) {
    if (RMS) {
        s[0] += g * c;
    } else {
        s[0] += c;
        s[1] += g;
        s[2] += g * c;
    }
}

// The backward's per-row constants from each thread's partial sums s (RMSNorm: s[0] = sum g*c;
// LayerNorm: sum c, sum g, sum g*c, with c = x - saved mean): delta = the true mean - the saved
// one, mean(g), and rstd * mean(g * (x - true mean)). Summed over the group first.
template <bool RMS>
__device__ __forceinline__ void backward_sums(float* s, int G, float* scratch, float rs, int n,
                                              float* delta, float* mean_g, float* mean_gx) {
    group_sum<RMS ? 1 : 3>(s, G, scratch);
    if (RMS) {
        *delta = *mean_g = 0.0f;
        *mean_gx = rs * s[0] / (float)n;
    } else {
        *delta = s[0] / (float)n;
        *mean_g = s[1] / (float)n;
        *mean_gx = rs * (s[2] - *delta * s[1]) / (float)n;
    }
}

// The moments of the whole group, as group_sum does it for sums.
__device__ __forceinline__ Moments group_merge(Moments s, int G, float* scratch) {
    s = warp_merge(s);
    if (G == 32) return s;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = G >> 5;
    if (lane == 0) {
        scratch[warp] = s.n;
        scratch[32 + warp] = s.mean;
        scratch[64 + warp] = s.m2;
    }
    __syncthreads();
    Moments w = {0.0f, 0.0f, 0.0f};
    if (lane < warps) {
        w.n = scratch[lane];
        w.mean = scratch[32 + lane];
        w.m2 = scratch[64 + lane];
    }
    s = warp_merge(w);
    __syncthreads();
    return s;
}

// ---------------------------------------------------------------------------------------------
// Forward: y = (x - mean) * rstd * weight + bias (LayerNorm) or x * rstd * weight (RMSNorm),
// with rstd = 1 / sqrt(var + eps) or 1 / sqrt(mean(x^2) + eps). With RESIDUAL, the row is
// s = x + residual rounded to T, written to sum_out and normalized.

template <typename T, typename W, int VEC, int ELEMS, bool RMS, bool RESIDUAL>
__global__ void __launch_bounds__(1024)
forward(const T* x, const T* residual,                           // IN (residual: RESIDUAL only)
        T* sum_out,                                              // OUT x + residual (RESIDUAL)
        const W* __restrict__ weight, const W* __restrict__ bias,  // IN, either may be null
        T* y,                                                    // OUT, may be x or residual
        float* mean_out, float* rstd_out,                        // OUT per row, may be null
        long long rows, int n, int G, float eps) {
    enum { VPT = ELEMS / VEC };  // vectors per thread
    __shared__ float scratch[3 * 32];
    const int t = threadIdx.x % G, R = blockDim.x / G, nvec = n / VEC;
    for (long long row = (long long)blockIdx.x * R + threadIdx.x / G; row < rows;
         row += (long long)gridDim.x * R) {
        const long long base = row * n;
        float v[ELEMS];
        float pivot = 0.0f;
        if (!RMS) {
            pivot = RESIDUAL ? round_to<T>(load1(x, base) + load1(residual, base))
                             : load1(x, base);
        }
#pragma unroll
        for (int k = 0; k < VPT; ++k) {
            const int i = t + k * G;
            if (i < nvec) {
                Vec<VEC, T>::load(x + base + (long long)i * VEC, v + k * VEC);
                if (RESIDUAL) {
                    float r[VEC];
                    Vec<VEC, T>::load(residual + base + (long long)i * VEC, r);
#pragma unroll
                    for (int e = 0; e < VEC; ++e) v[k * VEC + e] = round_to<T>(v[k * VEC + e] + r[e]);
                }
            }
        }

        float shift, rstd;
        if (RMS) {
            float sq[1] = {0.0f};
#pragma unroll
            for (int k = 0; k < VPT; ++k) {
                if (t + k * G < nvec) {
#pragma unroll
                    for (int e = 0; e < VEC; ++e) sq[0] += v[k * VEC + e] * v[k * VEC + e];
                }
            }
            group_sum<1>(sq, G, scratch);
            shift = 0.0f;
            rstd = 1.0f / sqrtf(sq[0] / (float)n + eps);
        } else {
            // This thread's values about the pivot: their mean, then M2 about that mean.
            float sum = 0.0f;
            int count = 0;
#pragma unroll
            for (int k = 0; k < VPT; ++k) {
                if (t + k * G < nvec) {
#pragma unroll
                    for (int e = 0; e < VEC; ++e) sum += v[k * VEC + e] - pivot;
                    count += VEC;
                }
            }
            Moments m;
            m.n = (float)count;
            m.mean = count ? sum / (float)count : 0.0f;
            m.m2 = 0.0f;
#pragma unroll
            for (int k = 0; k < VPT; ++k) {
                if (t + k * G < nvec) {
#pragma unroll
                    for (int e = 0; e < VEC; ++e) {
                        const float d = (v[k * VEC + e] - pivot) - m.mean;
                        m.m2 += d * d;
                    }
                }
            }
            m = group_merge(m, G, scratch);
            shift = m.mean;
            rstd = 1.0f / sqrtf(m.m2 / (float)n + eps);
            if (t == 0 && mean_out) store1(mean_out, row, pivot + m.mean);
        }
        if (t == 0 && rstd_out) store1(rstd_out, row, rstd);

        // Only now may s be stored: sum_out can be x or residual, whose first element every
        // thread of the group has read (as the pivot) by the time the group's statistics exist.
#pragma unroll
        for (int k = 0; k < VPT; ++k) {
            const int i = t + k * G;
            if (i < nvec) {
                float w[VEC], b[VEC], o[VEC];
                if (RESIDUAL) Vec<VEC, T>::store(sum_out + base + (long long)i * VEC, v + k * VEC);
                load_weight<VEC>(weight, i, w);
                load_bias<VEC>(bias, i, b);
#pragma unroll
                for (int e = 0; e < VEC; ++e) {
                    o[e] = ((v[k * VEC + e] - pivot) - shift) * rstd * w[e] + b[e];
                }
                Vec<VEC, T>::store(y + base + (long long)i * VEC, o);
            }
        }
    }
}

// The forward for rows too long for registers: one block per row, element by element, reading
// the row (or the sum it wrote) once per pass. Same arguments as `forward`, G == blockDim.x.
template <typename T, typename W, bool RMS, bool RESIDUAL>
__global__ void __launch_bounds__(1024)
forward_stream(const T* x, const T* residual, T* sum_out, const W* __restrict__ weight,
               const W* __restrict__ bias, T* y, float* mean_out, float* rstd_out,
               long long rows, int n, int G, float eps) {
    __shared__ float scratch[3 * 32];
    const int t = threadIdx.x;
    for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
        const long long base = row * n;
        const T* src = RESIDUAL ? sum_out : x;  // what the later passes read
        float pivot = 0.0f;
        if (!RMS) {
            pivot = RESIDUAL ? round_to<T>(load1(x, base) + load1(residual, base))
                             : load1(x, base);
        }
        // With RESIDUAL, sum_out may be x or residual: every thread reads the pivot before any
        // thread writes s over it.
        if (RESIDUAL && !RMS) __syncthreads();
        float s[1] = {0.0f};
        for (int j = t; j < n; j += G) {
            float v;
            if (RESIDUAL) {
                v = round_to<T>(load1(x, base + j) + load1(residual, base + j));
                store1(sum_out, base + j, v);
            } else {
                v = load1(x, base + j);
            }
            s[0] += RMS ? v * v : v - pivot;
        }
        group_sum<1>(s, G, scratch);
        float shift = 0.0f, rstd;
        if (RMS) {
            rstd = 1.0f / sqrtf(s[0] / (float)n + eps);
        } else {
            // Two passes about the pivot: the mean, then the squared deviations from it.
            shift = s[0] / (float)n;
            float q[1] = {0.0f};
            for (int j = t; j < n; j += G) {
                const float d = (load1(src, base + j) - pivot) - shift;
                q[0] += d * d;
            }
            group_sum<1>(q, G, scratch);
            rstd = 1.0f / sqrtf(q[0] / (float)n + eps);
            if (t == 0 && mean_out) store1(mean_out, row, pivot + shift);
        }
        if (t == 0 && rstd_out) store1(rstd_out, row, rstd);
        for (int j = t; j < n; j += G) {
            const float w = weight ? load1(weight, j) : 1.0f;
            const float b = bias ? load1(bias, j) : 0.0f;
            store1(y, base + j, ((load1(src, base + j) - pivot) - shift) * rstd * w + b);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Backward. With xhat = (x - mean) * rstd (RMSNorm: x * rstd) and g = dy * weight,
//   LayerNorm: dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
//   RMSNorm:   dx = rstd * (g - xhat * mean(g * xhat))
// plus dsum where given (the gradient reaching x + residual directly). The saved mean is
// refined: with c = x - mean and delta = mean(c), xhat = (c - delta) * rstd, and
// sum(g * xhat) = rstd * (sum(g * c) - delta * sum(g)), so one reduction of three sums serves.
// Each group adds dy * xhat and dy over its rows to registers and writes them as one row of
// part_w / part_b; groups that got no row write zeros.

template <typename T, typename W, int VEC, int ELEMS, bool RMS>
__global__ void __launch_bounds__(1024)
backward(const T* __restrict__ dy, const T* __restrict__ x,            // IN (rows, n)
         const float* __restrict__ mean, const float* __restrict__ rstd,  // IN per row (mean: LN)
         const W* __restrict__ weight, const T* __restrict__ dsum,     // IN, may be null
         T* __restrict__ dx,                                           // OUT (rows, n)
         float* __restrict__ part_w, float* __restrict__ part_b,       // OUT (groups, n) or null
         long long rows, int n, int G) {
    enum { VPT = ELEMS / VEC };
    __shared__ float scratch[3 * 32];
    const int t = threadIdx.x % G, R = blockDim.x / G, nvec = n / VEC;
    const long long group = (long long)blockIdx.x * R + threadIdx.x / G;
    const long long groups = (long long)gridDim.x * R;
    float acc_w[ELEMS], acc_b[ELEMS];
#pragma unroll
    for (int e = 0; e < ELEMS; ++e) acc_w[e] = acc_b[e] = 0.0f;

    for (long long row = group; row < rows; row += groups) {
        const long long base = row * n;
        const float rs = load1(rstd, row);
        const float mu = RMS ? 0.0f : load1(mean, row);
        Held<T, VEC, ELEMS> hx, hdy;
        float s[3] = {0.0f, 0.0f, 0.0f};  // LN: sum c, sum g, sum g * c; RMS: sum g * c
#pragma unroll
        for (int k = 0; k < VPT; ++k) {
            const int i = t + k * G;
            if (i < nvec) {
                float w[VEC];
                hx.load(x + base + (long long)i * VEC, k);
                hdy.load(dy + base + (long long)i * VEC, k);
                load_weight<VEC>(weight, i, w);
#pragma unroll
                for (int e = 0; e < VEC; ++e) {
                    const int j = k * VEC + e;
                    backward_terms<RMS>(s, hx[j] - mu, hdy[j] * w[e]);
                }
            }
        }
        float delta, mean_g, mean_gx;
        backward_sums<RMS>(s, G, scratch, rs, n, &delta, &mean_g, &mean_gx);
#pragma unroll
        for (int k = 0; k < VPT; ++k) {
            const int i = t + k * G;
            if (i < nvec) {
                float o[VEC], w[VEC];
                load_weight<VEC>(weight, i, w);  // again: cheaper than holding it (L1 hit)
#pragma unroll
                for (int e = 0; e < VEC; ++e) {
                    const int j = k * VEC + e;
                    const float d = hdy[j], xhat = ((hx[j] - mu) - delta) * rs;
                    o[e] = rs * (d * w[e] - mean_g - xhat * mean_gx);
                    acc_w[j] += d * xhat;
                    if (!RMS) acc_b[j] += d;
                }
                if (dsum) {
                    float extra[VEC];
                    Vec<VEC, T>::load(dsum + base + (long long)i * VEC, extra);
#pragma unroll
                    for (int e = 0; e < VEC; ++e) o[e] += extra[e];
                }
                Vec<VEC, T>::store(dx + base + (long long)i * VEC, o);
            }
        }
    }

    const long long pbase = group * n;
#pragma unroll
    for (int k = 0; k < VPT; ++k) {
        const int i = t + k * G;
        if (i < nvec) {
            if (part_w) Vec<VEC, float>::store(part_w + pbase + (long long)i * VEC, acc_w + k * VEC);
            if (part_b) Vec<VEC, float>::store(part_b + pbase + (long long)i * VEC, acc_b + k * VEC);
        }
    }
}

// The backward for rows too long for registers: one group (block) per partial row, element by
// element; the partial row lives in global memory, and each thread adds only to its own columns.
template <typename T, typename W, bool RMS>
__global__ void __launch_bounds__(1024)
backward_stream(const T* __restrict__ dy, const T* __restrict__ x, const float* __restrict__ mean,
                const float* __restrict__ rstd, const W* __restrict__ weight,
                const T* __restrict__ dsum, T* __restrict__ dx, float* __restrict__ part_w,
                float* __restrict__ part_b, long long rows, int n, int G) {
    __shared__ float scratch[3 * 32];
    const int t = threadIdx.x;
    const long long pbase = (long long)blockIdx.x * n;
    for (int j = t; j < n; j += G) {
        if (part_w) store1(part_w, pbase + j, 0.0f);
        if (part_b) store1(part_b, pbase + j, 0.0f);
    }
    for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
        const long long base = row * n;
        const float rs = load1(rstd, row);
        const float mu = RMS ? 0.0f : load1(mean, row);
        float s[3] = {0.0f, 0.0f, 0.0f};
        for (int j = t; j < n; j += G) {
            backward_terms<RMS>(s, load1(x, base + j) - mu,
                                load1(dy, base + j) * (weight ? load1(weight, j) : 1.0f));
        }
        float delta, mean_g, mean_gx;
        backward_sums<RMS>(s, G, scratch, rs, n, &delta, &mean_g, &mean_gx);
        for (int j = t; j < n; j += G) {
            const float c = load1(x, base + j) - mu;
            const float d = load1(dy, base + j);
            const float w = weight ? load1(weight, j) : 1.0f;
            const float xhat = (c - delta) * rs;
            const float extra = dsum ? load1(dsum, base + j) : 0.0f;
            store1(dx, base + j, rs * (d * w - mean_g - xhat * mean_gx) + extra);
            if (part_w) store1(part_w, pbase + j, load1(part_w, pbase + j) + d * xhat);
            if (part_b) store1(part_b, pbase + j, load1(part_b, pbase + j) + d);
        }
    }
}

// dweight and dbias: the column sums of the (parts, n) partials, in a fixed order. A block of
// 1024 threads takes 32 columns; its 32 warps each add every 32nd partial row (warp s: rows s,
// s + 32, ...), then one warp adds the 32 slice sums in order. Either pair may be null.
template <typename W>
__global__ void __launch_bounds__(1024)
column_sum(const float* __restrict__ part_w, const float* __restrict__ part_b,  // IN (parts, n)
           W* dweight, W* dbias,                                               // OUT (n,)
           int parts, int n) {
    __shared__ float slices[32][33];
    const int lane = threadIdx.x & 31, slice = threadIdx.x >> 5;
    const int col = blockIdx.x * 32 + lane;
    for (int q = 0; q < 2; ++q) {
        const float* part = q ? part_b : part_w;
        W* out = q ? dbias : dweight;
        if (!part) continue;
        float acc = 0.0f;
        if (col < n) {
            for (int p = slice; p < parts; p += 32) acc += load1(part, (long long)p * n + col);
        }
        slices[slice][lane] = acc;
        __syncthreads();
        if (slice == 0 && col < n) {
            float total = 0.0f;
            for (int k = 0; k < 32; ++k) total += slices[k][lane];
            store1(out, col, total);
        }
        __syncthreads();
    }
}

}  // namespace fastln
