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
 *           with CFG-delta the cond rows come out as served, y_u + W d.
 *
 * Plain C; gcc vectorizes the inner loops (-O3 -march=native -fno-math-errno). Rows are split over
 * OpenMP threads (the process's libgomp, which PyTorch has loaded already).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

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

static inline void load_row(const void *x, int is_bf16, int64_t r, int64_t K, float *dst) {
    if (is_bf16) {
        const uint16_t *src = (const uint16_t *)x + r * K;
        for (int64_t k = 0; k < K; ++k) dst[k] = bf16_to_f32(src[k]);
    } else {
        memcpy(dst, (const float *)x + r * K, (size_t)K * sizeof(float));
    }
}

/* Sylvester H_8, H[i][j] = (-1)^popcount(i & j): the first three butterfly stages of a
 * fast Walsh-Hadamard transform on 8 consecutive values, as one small matrix product that
 * gcc vectorizes (the stages themselves, strides 1, 2 and 4, do not). */
static const float H8[8][8] = {
    {1, 1, 1, 1, 1, 1, 1, 1},   {1, -1, 1, -1, 1, -1, 1, -1}, {1, 1, -1, -1, 1, 1, -1, -1},
    {1, -1, -1, 1, 1, -1, -1, 1}, {1, 1, 1, 1, -1, -1, -1, -1}, {1, -1, 1, -1, -1, 1, -1, 1},
    {1, 1, -1, -1, -1, -1, 1, 1}, {1, -1, -1, 1, -1, 1, 1, -1},
};

/* Unnormalized: the caller folds 1 / sqrt(hb) into the row's scale. */
static void fwht_blocks(float *v, int64_t K, int hb) {
    int first = 1; /* the stride the butterfly loops start at */
    if (hb >= 8) {
        for (int64_t c = 0; c < K; c += 8) {
            float in[8], out[8] = {0};
            memcpy(in, v + c, sizeof in);
            for (int i = 0; i < 8; ++i)
                for (int j = 0; j < 8; ++j) out[j] += in[i] * H8[i][j];
            memcpy(v + c, out, sizeof out);
        }
        first = 8;
    }
    for (int64_t b0 = 0; b0 < K; b0 += hb) {
        float *blk = v + b0;
        for (int h = first; h < hb; h <<= 1) {
            for (int i = 0; i < hb; i += 2 * h) {
                float *lo = blk + i, *hi = blk + i + h;
                for (int j = 0; j < h; ++j) {
                    float a = lo[j], b = hi[j];
                    lo[j] = a + b;
                    hi[j] = a - b;
                }
            }
        }
    }
}

/* Reductions in 8 independent lanes, which gcc vectorizes without -ffast-math (a plain
 * loop is one serial chain: it must keep the source's order of operations). */
static float row_absmax(const float *v, int64_t K) {
    float lane[8] = {0};
    int64_t k = 0;
    for (; k + 8 <= K; k += 8)
        for (int j = 0; j < 8; ++j) {
            const float a = fabsf(v[k + j]);
            lane[j] = a > lane[j] ? a : lane[j];
        }
    float amax = 0.0f;
    for (; k < K; ++k) amax = fabsf(v[k]) > amax ? fabsf(v[k]) : amax;
    for (int j = 0; j < 8; ++j) amax = lane[j] > amax ? lane[j] : amax;
    return amax;
}

static double row_sum(const float *v, int64_t K) {
    float lane[8] = {0};
    int64_t k = 0;
    for (; k + 8 <= K; k += 8)
        for (int j = 0; j < 8; ++j) lane[j] += v[k + j];
    double sum = 0.0;
    for (; k < K; ++k) sum += v[k];
    for (int j = 0; j < 8; ++j) sum += lane[j];
    return sum;
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
        float *v = thread_scratch(3 * K, &failed);
        float *inv_smooth = v ? v + 2 * K : NULL;
        if (v && smooth)
            for (int64_t k = 0; k < K; ++k) inv_smooth[k] = 1.0f / smooth[k];
#pragma omp for schedule(static)
        for (int64_t r = 0; r < M; ++r) {
            if (!v) continue;
            float *paired = v + K;
            load_row(x, is_bf16, r, K, v);
            if (delta_half > 0 && r >= delta_half) {
                load_row(x, is_bf16, r - delta_half, K, paired);
                for (int64_t k = 0; k < K; ++k) v[k] -= paired[k];
            }
            if (mean_out) {
                const float mean = (float)(row_sum(v, K) / (double)K);
                for (int64_t k = 0; k < K; ++k) v[k] -= mean;
                mean_out[r] = mean;
            }
            if (smooth)
                for (int64_t k = 0; k < K; ++k) v[k] *= inv_smooth[k];
            /* v is now sqrt(hb) times the normalized rotation (or 1x without one) */
            if (hb > 1) fwht_blocks(v, K, hb);
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
            const float inv = 1.0f / (scale * norm);
            int8_t *q = q_out + r * K;
            for (int64_t k = 0; k < K; ++k) {
                /* rintf rounds half to even in the default mode and inlines to roundps */
                float t = rintf(v[k] * inv);
                t = t < -qmax ? -qmax : t;
                q[k] = (int8_t)(t > qmax ? qmax : t);
            }
        }
        free(v);
    }
    return failed;
}

/* One output row in float32: acc * a_scale * w_scale (+ bias) (+ mean * weight_sum). */
static inline void epilogue_row(const void *acc, int acc_is_int32, int64_t m, int64_t N,
                                float as, const float *w_scale, const float *bias, float mu,
                                const float *weight_sum, float *y) {
    const int32_t *ai = (const int32_t *)acc + m * N;
    const float *af = (const float *)acc + m * N;
    for (int64_t n = 0; n < N; ++n) {
        float v = (acc_is_int32 ? (float)ai[n] : af[n]) * as * w_scale[n];
        if (bias) v += bias[n];
        if (weight_sum) v += mu * weight_sum[n];
        y[n] = v;
    }
}

static inline void store_row(const float *y, int64_t N, void *out, int out_is_bf16, int64_t m) {
    if (out_is_bf16) {
        uint16_t *ob = (uint16_t *)out + m * N;
        for (int64_t n = 0; n < N; ++n) ob[n] = f32_to_bf16(y[n]);
    } else {
        memcpy((float *)out + m * N, y, (size_t)N * sizeof(float));
    }
}

/* With delta_half > 0 the rows are [uncond; cond - uncond] and the served cond row is
 * y_u + W d: each pair is finished together, in float32, and rounded once. */
int trdq_int8_epilogue(const void *acc, int acc_is_int32, int64_t M, int64_t N,
                       const float *a_scale, const float *w_scale, const float *bias,
                       const float *mean, const float *weight_sum, void *out, int out_is_bf16,
                       int64_t delta_half, int threads) {
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
            store_row(y, N, out, out_is_bf16, m);
            if (delta_half > 0) {
                const int64_t c = m + delta_half;
                float *d = y + N; /* W d, no bias: y_c = y_u + W d */
                epilogue_row(acc, acc_is_int32, c, N, a_scale[c], w_scale, NULL,
                             mean ? mean[c] : 0.0f, mean ? weight_sum : NULL, d);
                for (int64_t n = 0; n < N; ++n) d[n] += y[n];
                store_row(d, N, out, out_is_bf16, c);
            }
        }
        free(y);
    }
    return failed;
}
