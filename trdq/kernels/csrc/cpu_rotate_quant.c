/* CPU activation quantizer of the cpu_int8 backend: one pass per row, in cache.
 *
 * For each row r of x [M, K] (float32 or bfloat16), on the row's own copy in float32:
 *   1. CFG-delta (delta_half > 0): rows r >= delta_half become x[r] - x[r - delta_half];
 *   2. centring (mean_out given): subtract the row mean, written to mean_out[r];
 *   3. smoothing (smooth given): divide by smooth[k];
 *   4. block Hadamard rotation (hb > 0): in-place fast Walsh-Hadamard transform in each
 *      block of hb channels, then / sqrt(hb) (the normalized transform of rotation.fwht);
 *   5. per-row scale: static (row_scale given) or absmax * clip[r] / qmax, at least 1e-8;
 *   6. q = clamp(round-half-even(v / scale), -qmax, qmax) as int8.
 * Everything the Python path does as separate passes over [M, K] (trdq/kernels/cpu_int8.py
 * says why that costs more than the int8 GEMM) happens while the row sits in L1.
 *
 * epilogue: out[m, n] = acc[m, n] * a_scale[m] * w_scale[n] (+ bias[n])
 *           (+ mean[m] * weight_sum[n]), acc int32 or float32, out float32 or bfloat16;
 *           with CFG-delta the cond rows come out as served, y_u + W d; then, if given,
 *           the low-rank error branch, + sum_r lr_x[m, r] * lr_up_t[r, n] (lr_x = x down^T
 *           of the rows as served, not as differenced: trdq/low_rank.py); then, if asked,
 *           GELU (tanh approximation): the feed-forward's activation, on the row in L1
 *           instead of another pass over [M, N].
 *
 * Steps 1 and 2's sum share one pass, 2-4 (and the transform's first three stages) another.
 * With AVX2 (every x86 CPU this targets) the transform, the rounding and the butterflies
 * use intrinsics: H_8 in one register, two butterfly stages per pass over the row; the
 * plain-C branches (tested through a -march=x86-64 build) give the same results. The
 * reductions are OpenMP SIMD reductions written with comparisons, which gcc vectorizes
 * (fmaxf, with its NaN rules, ran 20x slower). Rows are split over OpenMP threads (the
 * process's libgomp, which PyTorch has loaded already).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

static inline float bf16_to_f32(uint16_t v) {
    uint32_t u = (uint32_t)v << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t f32_to_bf16(float f) { /* round to nearest even, as torch */
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); /* NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* The three first butterfly stages (strides 1, 2, 4) of a fast Walsh-Hadamard transform,
 * on 8 consecutive values: a product with the Sylvester H_8, H[i][j] = (-1)^popcount(i & j). */
#ifdef __AVX2__
/* In one AVX register: each stage adds the lane's partner (a permutation) to the lane
 * times +1 (low member of the pair) or -1 (high member): out = partner + sign * v. */
static inline __m256 h8_avx(__m256 v) {
    const __m256 s1 = _mm256_setr_ps(1, -1, 1, -1, 1, -1, 1, -1);
    const __m256 s2 = _mm256_setr_ps(1, 1, -1, -1, 1, 1, -1, -1);
    const __m256 s4 = _mm256_setr_ps(1, 1, 1, 1, -1, -1, -1, -1);
    v = _mm256_add_ps(_mm256_permute_ps(v, 0xB1), _mm256_mul_ps(v, s1));
    v = _mm256_add_ps(_mm256_permute_ps(v, 0x4E), _mm256_mul_ps(v, s2));
    return _mm256_add_ps(_mm256_permute2f128_ps(v, v, 1), _mm256_mul_ps(v, s4));
}
#else
static const float H8[8][8] = {
    {1, 1, 1, 1, 1, 1, 1, 1},   {1, -1, 1, -1, 1, -1, 1, -1}, {1, 1, -1, -1, 1, 1, -1, -1},
    {1, -1, -1, 1, 1, -1, -1, 1}, {1, 1, 1, 1, -1, -1, -1, -1}, {1, -1, 1, -1, -1, 1, -1, 1},
    {1, 1, -1, -1, -1, -1, 1, 1}, {1, -1, -1, 1, -1, 1, 1, -1},
};
#endif

/* One butterfly stage at stride h (a multiple of 8 here): lo, hi <- lo + hi, lo - hi. */
static inline void butterflies8(float *restrict lo, float *restrict hi, int h) {
    for (int j = 0; j < h; j += 8) {
#ifdef __AVX2__
        const __m256 a = _mm256_loadu_ps(lo + j), b = _mm256_loadu_ps(hi + j);
        _mm256_storeu_ps(lo + j, _mm256_add_ps(a, b));
        _mm256_storeu_ps(hi + j, _mm256_sub_ps(a, b));
#else
        for (int i = j; i < j + 8; ++i) {
            const float a = lo[i], b = hi[i];
            lo[i] = a + b;
            hi[i] = a - b;
        }
#endif
    }
}

#ifdef __AVX2__
/* Two stages at once, strides h and 2h (h a multiple of 8), on the quarters a, b, c, d of a
 * run of 4h values: the same additions in the same order as two butterflies8 passes, with
 * one load and one store per value instead of two. */
static inline void butterflies8x2(float *v, int h) {
    for (int j = 0; j < h; j += 8) {
        const __m256 a = _mm256_loadu_ps(v + j), b = _mm256_loadu_ps(v + h + j);
        const __m256 c = _mm256_loadu_ps(v + 2 * h + j), d = _mm256_loadu_ps(v + 3 * h + j);
        const __m256 ab = _mm256_add_ps(a, b), a_b = _mm256_sub_ps(a, b);
        const __m256 cd = _mm256_add_ps(c, d), c_d = _mm256_sub_ps(c, d);
        _mm256_storeu_ps(v + j, _mm256_add_ps(ab, cd));
        _mm256_storeu_ps(v + h + j, _mm256_add_ps(a_b, c_d));
        _mm256_storeu_ps(v + 2 * h + j, _mm256_sub_ps(ab, cd));
        _mm256_storeu_ps(v + 3 * h + j, _mm256_sub_ps(a_b, c_d));
    }
}
#endif

/* Steps 2-4 after the load, in one pass over the row: v = (v - mean) * inv_smooth, then
 * (h8) the transform's first three stages on each run of 8 values. */
static void centre_smooth_h8(float *restrict v, int64_t K, float mean,
                             const float *restrict inv_smooth, int h8) {
    int64_t c = 0;
#ifdef __AVX2__
    const __m256 mu = _mm256_set1_ps(mean);
    for (; c + 8 <= K; c += 8) {
        __m256 t = _mm256_sub_ps(_mm256_loadu_ps(v + c), mu);
        if (inv_smooth) t = _mm256_mul_ps(t, _mm256_loadu_ps(inv_smooth + c));
        _mm256_storeu_ps(v + c, h8 ? h8_avx(t) : t);
    }
#else
    for (; c + 8 <= K && h8; c += 8) {
        float in[8], out[8] = {0};
        for (int i = 0; i < 8; ++i)
            in[i] = inv_smooth ? (v[c + i] - mean) * inv_smooth[c + i] : v[c + i] - mean;
        for (int i = 0; i < 8; ++i)
            for (int j = 0; j < 8; ++j) out[j] += in[i] * H8[i][j];
        memcpy(v + c, out, sizeof out);
    }
#endif
    for (; c < K; ++c) /* the tail (K % 8; never with h8: 8 divides hb divides K) */
        v[c] = inv_smooth ? (v[c] - mean) * inv_smooth[c] : v[c] - mean;
}

/* The remaining stages of the unnormalized fast Walsh-Hadamard transform in each block of
 * hb values, from stride h (8 after centre_smooth_h8, else 1); the caller folds 1 / sqrt(hb)
 * into the row's scale. Blocks are contiguous and 2h divides hb, so each stage runs over the
 * whole row at once. */
static void fwht_stages(float *v, int64_t K, int hb, int h) {
#ifdef __AVX2__
    for (; h >= 8 && 4 * h <= hb; h <<= 2)
        for (int64_t i = 0; i < K; i += 4 * h) butterflies8x2(v + i, h);
#endif
    for (; h < hb; h <<= 1) {
        for (int64_t i = 0; i < K; i += 2 * h) {
            if (h >= 8) {
                butterflies8(v + i, v + i + h, h);
                continue;
            }
            float *lo = v + i, *hi = v + i + h;
            for (int j = 0; j < h; ++j) {
                const float a = lo[j], b = hi[j];
                lo[j] = a + b;
                hi[j] = a - b;
            }
        }
    }
}

/* Step 1: the row (minus its CFG pair when paired >= 0) into v in float32, in one pass;
 * returns the row's sum (for the centring). */
static float load_row_delta(const void *x, int is_bf16, int64_t r, int64_t paired, int64_t K,
                            float *restrict v) {
    float sum = 0.0f;
    if (is_bf16) {
        const uint16_t *restrict a = (const uint16_t *)x + r * K;
        const uint16_t *restrict b = (const uint16_t *)x + (paired >= 0 ? paired : r) * K;
        if (paired >= 0) {
#pragma omp simd reduction(+ : sum)
            for (int64_t k = 0; k < K; ++k) {
                v[k] = bf16_to_f32(a[k]) - bf16_to_f32(b[k]);
                sum += v[k];
            }
        } else {
#pragma omp simd reduction(+ : sum)
            for (int64_t k = 0; k < K; ++k) {
                v[k] = bf16_to_f32(a[k]);
                sum += v[k];
            }
        }
    } else {
        const float *restrict a = (const float *)x + r * K;
        const float *restrict b = (const float *)x + (paired >= 0 ? paired : r) * K;
        if (paired >= 0) {
#pragma omp simd reduction(+ : sum)
            for (int64_t k = 0; k < K; ++k) {
                v[k] = a[k] - b[k];
                sum += v[k];
            }
        } else {
#pragma omp simd reduction(+ : sum)
            for (int64_t k = 0; k < K; ++k) {
                v[k] = a[k];
                sum += v[k];
            }
        }
    }
    return sum;
}

/* Reductions as OpenMP SIMD reductions, which gcc vectorizes without -ffast-math (a plain
 * loop is one serial chain: it must keep the source's order of operations). Written with
 * comparisons, not fmaxf: fmaxf's NaN rules keep gcc from vectorizing it (20x slower). */
static float row_absmax(const float *v, int64_t K) {
    float amax = 0.0f;
#pragma omp simd reduction(max : amax)
    for (int64_t k = 0; k < K; ++k) {
        const float a = fabsf(v[k]);
        amax = a > amax ? a : amax;
    }
    return amax;
}

/* q[k] = clamp(round-half-even(v[k] * inv), -qmax, qmax) as int8. */
static void quantize_row(const float *v, int64_t K, float inv, float qmax, int8_t *q) {
    int64_t k = 0;
#ifdef __AVX2__
    /* clamp in float, convert with the default rounding mode (half to even), narrow with
     * the saturating packs (exact after the clamp), then undo the packs' lane interleave */
    const __m256 vi = _mm256_set1_ps(inv), hi = _mm256_set1_ps(qmax), lo = _mm256_set1_ps(-qmax);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
#define TRDQ_Q8(off) \
    _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(_mm256_loadu_ps(v + k + (off)), vi), lo), hi))
    for (; k + 32 <= K; k += 32) {
        const __m256i ab = _mm256_packs_epi32(TRDQ_Q8(0), TRDQ_Q8(8));
        const __m256i cd = _mm256_packs_epi32(TRDQ_Q8(16), TRDQ_Q8(24));
        _mm256_storeu_si256((__m256i *)(q + k),
                            _mm256_permutevar8x32_epi32(_mm256_packs_epi16(ab, cd), order));
    }
#undef TRDQ_Q8
#endif
    for (; k < K; ++k) {
        /* rintf rounds half to even in the default mode and inlines to roundps */
        float t = rintf(v[k] * inv);
        t = t < -qmax ? -qmax : t;
        q[k] = (int8_t)(t > qmax ? qmax : t);
    }
}

/* Scratch of n floats for the calling OpenMP thread; on failure it sets *failed, and the
 * thread then skips its rows (the caller reports the error to Python). */
static float *thread_scratch(int64_t n, int *failed) {
    float *buf = (float *)malloc((size_t)n * sizeof(float));
    if (!buf) {
#pragma omp atomic write
        *failed = 1;
    }
    return buf;
}

int trdq_rotate_quant(const void *x, int is_bf16, int64_t M, int64_t K, int64_t delta_half,
                      const float *smooth, int hb, const float *row_scale, const float *clip,
                      float qmax, int8_t *q_out, float *scale_out, float *mean_out,
                      int threads) {
    int failed = 0;
#pragma omp parallel num_threads(threads)
    {
        float *v = thread_scratch(2 * K, &failed);
        float *inv_smooth = v ? v + K : NULL;
        if (v && smooth)
            for (int64_t k = 0; k < K; ++k) inv_smooth[k] = 1.0f / smooth[k];
#pragma omp for schedule(static)
        for (int64_t r = 0; r < M; ++r) {
            if (!v) continue;
            const int64_t paired = delta_half > 0 && r >= delta_half ? r - delta_half : -1;
            const float sum = load_row_delta(x, is_bf16, r, paired, K, v);
            const float mean = mean_out ? sum / (float)K : 0.0f; /* x - 0 is exact */
            if (mean_out) mean_out[r] = mean;
            const int h8 = hb >= 8;
            if (mean_out || smooth || h8) centre_smooth_h8(v, K, mean, smooth ? inv_smooth : NULL, h8);
            /* v is now sqrt(hb) times the normalized rotation (or 1x without one) */
            if (hb > 1) fwht_stages(v, K, hb, h8 ? 8 : 1);
            const float norm = hb > 1 ? (float)sqrt((double)hb) : 1.0f;
            float scale;
            if (row_scale)
                scale = row_scale[r];
            else
                scale = row_absmax(v, K) / norm * clip[r] / qmax;
            if (!(scale >= 1e-8f)) scale = 1e-8f;
            scale_out[r] = scale;
            /* one multiply per value: 1 / (scale * sqrt(hb)); the rare value within an ulp of
             * a rounding boundary can land one step off the reference's division */
            quantize_row(v, K, 1.0f / (scale * norm), qmax, q_out + r * K);
        }
        free(v);
    }
    return failed;
}

/* One output row in float32: acc * a_scale * w_scale (+ bias) (+ mean * weight_sum). */
static inline void epilogue_row(const void *acc, int acc_is_int32, int64_t m, int64_t N,
                                float as, const float *restrict w_scale,
                                const float *restrict bias, float mu,
                                const float *restrict weight_sum, float *restrict y) {
    /* one simple loop per term (each vectorizes; y stays in L1), in the reference's order */
    if (acc_is_int32) {
        const int32_t *restrict ai = (const int32_t *)acc + m * N;
        for (int64_t n = 0; n < N; ++n) y[n] = (float)ai[n] * as * w_scale[n];
    } else {
        const float *restrict af = (const float *)acc + m * N;
        for (int64_t n = 0; n < N; ++n) y[n] = af[n] * as * w_scale[n];
    }
    if (bias)
        for (int64_t n = 0; n < N; ++n) y[n] += bias[n];
    if (weight_sum)
        for (int64_t n = 0; n < N; ++n) y[n] += mu * weight_sum[n];
}

/* The low-rank branch on one output row: y[n] += sum_r a[r] * up_t[r, n] (rank r of 16:
 * one vectorized sweep of y per r, y and up_t's rows in L1). */
static inline void add_low_rank_row(const float *restrict a, const float *restrict up_t,
                                    int64_t R, int64_t N, float *restrict y) {
    for (int64_t r = 0; r < R; ++r) {
        const float ar = a[r];
        const float *restrict u = up_t + r * N;
        for (int64_t n = 0; n < N; ++n) y[n] += ar * u[n];
    }
}

static inline void store_row(const float *restrict y, int64_t N, void *out, int out_is_bf16,
                             int64_t m) {
    if (out_is_bf16) {
        uint16_t *restrict ob = (uint16_t *)out + m * N;
        for (int64_t n = 0; n < N; ++n) ob[n] = f32_to_bf16(y[n]);
    } else {
        memcpy((float *)out + m * N, y, (size_t)N * sizeof(float));
    }
}

/* With delta_half > 0 the rows are [uncond; cond - uncond] and the served cond row is
 * y_u + W d: each pair is finished together, in float32, and rounded once. */
/* GELU, tanh approximation (F.gelu(approximate="tanh")), in place on a row of the epilogue:
 * 0.5 x (1 + tanh(u)) with u = sqrt(2/pi) (x + 0.044715 x^3) is x sigmoid(2u), computed as
 * x - x / (exp(z) + 1), z = 2u clamped to +-20 (the sigmoid is 0 or 1 to float precision
 * beyond). exp(z) = 2^n p(r), r = z - n ln2 (ln2 in two parts), p Cephes' degree-6
 * polynomial: ~1e-7 relative error. */
static inline float gelu_tanh1(float x) {
    float z = 1.5957691216f * (x + 0.044715f * x * x * x);
    z = z > 20.0f ? 20.0f : (z < -20.0f ? -20.0f : z);
    return x - x / (expf(z) + 1.0f);
}

#if defined(__AVX2__) && defined(__FMA__)
static inline __m256 exp_clamped8(__m256 z) {
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(z, _mm256_set1_ps(1.44269504089f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), z);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i e = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
#endif

static void gelu_tanh_row(float *restrict y, int64_t N) {
    int64_t n = 0;
#if defined(__AVX2__) && defined(__FMA__)
    const __m256 one = _mm256_set1_ps(1.0f);
    const __m256 lim = _mm256_set1_ps(20.0f), nlim = _mm256_set1_ps(-20.0f);
    for (; n + 8 <= N; n += 8) {
        const __m256 x = _mm256_loadu_ps(y + n);
        const __m256 x3 = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
        __m256 z = _mm256_mul_ps(_mm256_set1_ps(1.5957691216f),
                                 _mm256_fmadd_ps(_mm256_set1_ps(0.044715f), x3, x));
        z = _mm256_max_ps(_mm256_min_ps(z, lim), nlim);
        const __m256 e1 = _mm256_add_ps(exp_clamped8(z), one);
        _mm256_storeu_ps(y + n, _mm256_sub_ps(x, _mm256_div_ps(x, e1)));
    }
#endif
    for (; n < N; ++n) y[n] = gelu_tanh1(y[n]);
}

int trdq_int8_epilogue(const void *acc, int acc_is_int32, int64_t M, int64_t N,
                       const float *a_scale, const float *w_scale, const float *bias,
                       const float *mean, const float *weight_sum, void *out, int out_is_bf16,
                       int64_t delta_half, const float *lr_x, const float *lr_up_t, int64_t R,
                       int gelu, int threads) {
    const int64_t rows = delta_half > 0 ? delta_half : M;
    int failed = 0;
#pragma omp parallel num_threads(threads)
    {
        float *y = thread_scratch(2 * N, &failed);
#pragma omp for schedule(static)
        for (int64_t m = 0; m < rows; ++m) {
            if (!y) continue;
            epilogue_row(acc, acc_is_int32, m, N, a_scale[m], w_scale, bias,
                         mean ? mean[m] : 0.0f, mean ? weight_sum : NULL, y);
            if (delta_half > 0) { /* the cond row first: it adds the uncond row before GELU */
                const int64_t c = m + delta_half;
                float *d = y + N; /* W d, no bias: y_c = y_u + W d */
                epilogue_row(acc, acc_is_int32, c, N, a_scale[c], w_scale, NULL,
                             mean ? mean[c] : 0.0f, mean ? weight_sum : NULL, d);
                for (int64_t n = 0; n < N; ++n) d[n] += y[n]; /* y_u before its branch */
                if (lr_x) add_low_rank_row(lr_x + c * R, lr_up_t, R, N, d);
                if (gelu) gelu_tanh_row(d, N);
                store_row(d, N, out, out_is_bf16, c);
            }
            if (lr_x) add_low_rank_row(lr_x + m * R, lr_up_t, R, N, y);
            if (gelu) gelu_tanh_row(y, N);
            store_row(y, N, out, out_is_bf16, m);
        }
        free(y);
    }
    return failed;
}

/* 4-bit weights packed two per byte (low nibble: even k; trdq.primitives.pack_int4) to
 * int8, n bytes -> 2n values: each nibble sign-extended by an arithmetic shift. The CPU
 * path unpacks its 4-bit weights at every call; as torch ops the interleave is a copy of
 * its own. */
void trdq_unpack_int4(const uint8_t *restrict in, int8_t *restrict out, int64_t n,
                      int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < n; ++i) {
        const int8_t b = (int8_t)in[i];
        out[2 * i] = (int8_t)((int8_t)(b << 4) >> 4);
        out[2 * i + 1] = (int8_t)(b >> 4);
    }
}
