/* Matrix products for decoding on CPU, int8, fp32 or bf16 weights, fp32 activations and results
 * (with AVX512_BF16, int8 and bf16 weights multiply the activations rounded to bf16: product_pairs):
 *   y (M, O) = x (M, I) @ (scale (O,) * W (O, I)).T    (float weights: no scale)
 * and the row operations around them that step.c folds into a decoding step.
 *
 * Why by hand: at batch 1 a decoding step is matrix-vector products bound by reading the weights.
 * torch's int8 weight-only kernels (_weight_int8pack_mm, _int_mm, fbgemm's dynamic linear) read
 * about 9-10 GB/s on this CPU out of cache, bound by widening int8 to float, where MKL's fp32
 * product reads 21. Here each 64-element chunk of a weight row is widened in registers once and
 * multiplied into up to four rows of x (or, for one row of x, four weight rows share each load of
 * x), with the weights a few KB ahead prefetched (the 120 int8 products of SmolLM2-135M's layers:
 * torch's kernel 11.9 ms, this one without the prefetch 9.2 ms, with it 4-6 ms).
 *
 * Exactness: a result never depends on how many rows are multiplied with it, which block of four
 * it falls in, or which thread computes it (the same sequence of operations per (row, output)),
 * so a speculative verification pass of k+1 tokens gives, bit for bit, the products one-token
 * steps give (tested).
 *
 * Threads: the outputs are split over torch's OpenMP pool (the library is linked to the libgomp
 * torch loaded), so the kernel runs on torch's threads and no second pool spins against them.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "kernels.h"
#ifdef __AVX512F__
#include <immintrin.h>
#endif

#ifndef PREFETCH
#define PREFETCH 4096  /* bytes ahead: measured 256 -> 10.7 GB/s, 1024 -> 17, 4096 -> 18-26 */
#endif
#ifndef PREFETCH_FP32
#define PREFETCH_FP32 8192  /* fp32 rows: 4096 -> 33.7 ms a SmolLM2 step, 8192 -> 28.7, 16384 -> 29.5 */
#endif
#ifndef OUT_BLOCK
#define OUT_BLOCK 16   /* outputs per OpenMP task */
#endif
#define INLINE static inline __attribute__((always_inline))

#ifdef __AVX512F__
/* Weight kinds (kernels.h): INT8 (with a scale per output), FP32, BF16 (the top half of an fp32). */
/* Elements i..i+63 of a weight row as four vectors of 16 floats. Called with a constant kind `fp`,
 * so each product below is compiled once per weight type. */
INLINE void load64(const void *w, size_t i, int fp, __m512 v[4]) {
    if (fp == BF16) {
        const uint16_t *h = (const uint16_t *)w + i;
        _mm_prefetch((const char *)h + PREFETCH, _MM_HINT_T0);
        _mm_prefetch((const char *)h + PREFETCH + 64, _MM_HINT_T0);
        __m512i lo = _mm512_loadu_si512((const void *)h), hi = _mm512_loadu_si512((const void *)(h + 32));
        v[0] = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(lo)), 16));
        v[1] = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(lo, 1)), 16));
        v[2] = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(hi)), 16));
        v[3] = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(hi, 1)), 16));
    } else if (fp == FP32) {
        const float *f = (const float *)w + i;
        for (int j = 0; j < 4; j++) _mm_prefetch((const char *)f + PREFETCH_FP32 + 64 * j, _MM_HINT_T0);
        for (int j = 0; j < 4; j++) v[j] = _mm512_loadu_ps(f + 16 * j);
    } else {
        const int8_t *b = (const int8_t *)w + i;
        _mm_prefetch((const char *)b + PREFETCH, _MM_HINT_T0);
        __m512i wb = _mm512_loadu_si512((const void *)b);
        v[0] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_castsi512_si128(wb)));
        v[1] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(wb, 1)));
        v[2] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(wb, 2)));
        v[3] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(wb, 3)));
    }
}

INLINE void prefetch64(const void *w, size_t i, int fp) {
    if (fp == BF16) {
        const char *h = (const char *)((const uint16_t *)w + i);
        _mm_prefetch(h + PREFETCH, _MM_HINT_T0);
        _mm_prefetch(h + PREFETCH + 64, _MM_HINT_T0);
    } else if (fp == FP32) {
        const char *f = (const char *)((const float *)w + i);
        for (int j = 0; j < 4; j++) _mm_prefetch(f + PREFETCH_FP32 + 64 * j, _MM_HINT_T0);
    } else {
        _mm_prefetch((const char *)((const int8_t *)w + i) + PREFETCH, _MM_HINT_T0);
    }
}

INLINE __m512 load16(const void *w, size_t i, int fp) {
    if (fp == BF16)
        return _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)((const uint16_t *)w + i))), 16));
    return fp == FP32 ? _mm512_loadu_ps((const float *)w + i)
                      : _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)((const int8_t *)w + i))));
}
#endif

INLINE float weight(const void *w, size_t i, int fp) {
    if (fp == BF16) {
        union { uint32_t u; float f; } b = {(uint32_t)((const uint16_t *)w)[i] << 16};
        return b.f;
    }
    return fp == FP32 ? ((const float *)w)[i] : (float)((const int8_t *)w)[i];
}

/* A tile of weight rows (w, w + ldw, ...) against rows of x (x, x + ldx, ...), at most 16 pairs:
 * every weight chunk is widened once for all x rows, and the weight rows are four streams in
 * flight. Each (x row, weight row) pair has one accumulator and gets the same operations in the
 * same order whatever the tile's shape: per 64 elements four FMAs, then a 16-element tail, the
 * vector reduction and a scalar tail. So a result does not depend on m (verification pass or
 * one-token step), on its place in a tile, or on the thread that computes it. */
#ifdef __AVX512F__
INLINE void tile(const float *x, size_t ldx, int xr, const void *w, size_t ldw, int wr, int n, float out[4][8],
                 int fp) {
    __m512 acc[4][8];
    size_t es = fp == FP32 ? 4 : fp == BF16 ? 2 : 1;
    for (int r = 0; r < wr; r++)
        for (int j = 0; j < xr; j++) acc[r][j] = _mm512_setzero_ps();
    int i = 0;
    for (; i + 64 <= n; i += 64) {
        for (int r = 0; r < wr; r++) prefetch64((const char *)w + r * ldw * es, i, fp);
        /* 16 elements at a time: each weight vector and each x vector is loaded once for the tile
         * (wr + xr loads for wr * xr FMAs); every pair still gets its four FMAs per 64 in order. */
        for (int s = 0; s < 64; s += 16) {
            __m512 v[4];
            for (int r = 0; r < wr; r++) v[r] = load16((const char *)w + r * ldw * es, i + s, fp);
            for (int j = 0; j < xr; j++) {
                __m512 xv = _mm512_loadu_ps(x + j * ldx + i + s);
                for (int r = 0; r < wr; r++) acc[r][j] = _mm512_fmadd_ps(v[r], xv, acc[r][j]);
            }
        }
    }
    for (; i + 16 <= n; i += 16)
        for (int r = 0; r < wr; r++) {
            __m512 v = load16((const char *)w + r * ldw * es, i, fp);
            for (int j = 0; j < xr; j++) acc[r][j] = _mm512_fmadd_ps(v, _mm512_loadu_ps(x + j * ldx + i), acc[r][j]);
        }
    for (int r = 0; r < wr; r++)
        for (int j = 0; j < xr; j++) {
            float s = _mm512_reduce_add_ps(acc[r][j]);
            for (int t = i; t < n; t++) s += x[j * ldx + t] * weight((const char *)w + r * ldw * es, t, fp);
            out[r][j] = s;
        }
}
#else
INLINE void tile(const float *x, size_t ldx, int xr, const void *w, size_t ldw, int wr, int n, float out[4][8],
                 int fp) {
    size_t es = fp == FP32 ? 4 : fp == BF16 ? 2 : 1;
    for (int r = 0; r < wr; r++)
        for (int j = 0; j < xr; j++) {
            float s = 0.0f;
            for (int t = 0; t < n; t++) s += x[j * ldx + t] * weight((const char *)w + r * ldw * es, t, fp);
            out[r][j] = s;
        }
}
#endif

/* A tile with its shape as constants where it is a common one, so the compiler unrolls the loops
 * and keeps the accumulators in registers (the operations per pair are the same either way). */
#define SHAPE(fn, W, X) else if (wr == W && xr == X) fn(x, ldx, X, w, ldw, W, n, out, fp)
INLINE void tile_fixed(const float *x, size_t ldx, int xr, const void *w, size_t ldw, int wr, int n,
                       float out[4][8], int fp) {
    if (0) {}
    SHAPE(tile, 4, 1); SHAPE(tile, 4, 2); SHAPE(tile, 4, 3); SHAPE(tile, 4, 4);
    SHAPE(tile, 2, 8); SHAPE(tile, 2, 7); SHAPE(tile, 2, 6); SHAPE(tile, 2, 5);
    SHAPE(tile, 2, 4); SHAPE(tile, 2, 3); SHAPE(tile, 2, 2); SHAPE(tile, 2, 1);
    else tile(x, ldx, xr, w, ldw, wr, n, out, fp);
}

#ifdef __AVX512BF16__
/* bf16 and int8 weights on a CPU with AVX512_BF16: x is rounded to bf16 (to nearest even) once per
 * product, int8 weights are widened to bf16 (exact: every int8 is a bf16), and each instruction
 * multiplies 32 pairs (vdpbf16ps: per fp32 lane, acc + w[2i] x[2i] + w[2i+1] x[2i+1]): twice the
 * products per instruction of an fp32 FMA, and for bf16 weights no widening at all. A pass of several
 * rows (batches, verification) is bound by these products, not by reading the weights. Measured on the
 * five products of a SmolLM2 layer and its output layer (medians of interleaved runs, ms, weights
 * widened to fp32 -> pairs): bf16 1 row 3.20 -> 2.70, 8 rows 4.26 -> 4.18, 16 rows 7.92 -> 5.14,
 * 24 rows 11.58 -> 6.65; int8 1 row 1.43 -> 1.19, 4 rows 2.05 -> 1.31, 8 rows 3.82 -> 2.49, 16 rows
 * 7.35 -> 4.53. A whole SmolLM2 pass of 20 positions: bf16 3.32x a one-position pass -> 2.40x, int8
 * 5.90x -> 3.82x (draft_length.row_cost). Rounding the activations is what a bf16 model in torch
 * does too; greedy texts kept as close to fp32 weights' (21 prompts, 96 tokens: bf16 13 -> 14
 * identical, int8 4 -> 2, mean common prefix 45.3 -> 44.4 and 21.7 -> 20.7 tokens: int8's own
 * rounding of the weights dominates). Each (row, output) pair still gets the same operations in the
 * same order whatever the tile, so results keep not depending on m. */
#ifndef XT_PAIRS
#define XT_PAIRS 6
#endif
static __thread uint16_t *xb_buf;
static __thread size_t xb_cap;

/* 32 bf16 of a row from element i, zeros past n (the tail). */
INLINE __m512i load32h(const uint16_t *p, int i, int n) {
    if (i + 32 <= n) return _mm512_loadu_si512((const void *)(p + i));
    return _mm512_maskz_loadu_epi16((__mmask32)((1ull << (n - i)) - 1), (const void *)(p + i));
}

/* 32 weights of a row from element i as bf16 pairs, zeros past n: bf16 weights as they are, int8
 * ones widened (every int8 is exact in bf16), once for all the rows of x in the tile. */
INLINE __m512bh load32w(const void *w, int i, int n, int fp) {
    if (fp == BF16) return (__m512bh)load32h((const uint16_t *)w, i, n);
    const int8_t *b = (const int8_t *)w + i;
    __m256i v = i + 32 <= n ? _mm256_loadu_si256((const __m256i *)b)
                            : _mm256_maskz_loadu_epi8((__mmask32)((1ull << (n - i)) - 1), (const void *)b);
    __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(v)));
    __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(v, 1)));
    return _mm512_cvtne2ps_pbh(hi, lo);
}

INLINE void tile_pairs(const uint16_t *x, size_t ldx, int xr, const void *w, size_t ldw, int wr, int n,
                       float out[4][8], int fp) {
    __m512 acc[4][8];
    size_t es = fp == BF16 ? 2 : 1;
    for (int r = 0; r < wr; r++)
        for (int j = 0; j < xr; j++) acc[r][j] = _mm512_setzero_ps();
    for (int i = 0; i < n; i += 32) {
        __m512bh v[4];
        for (int r = 0; r < wr; r++) {
            const char *row = (const char *)w + r * ldw * es;
            _mm_prefetch(row + i * es + PREFETCH, _MM_HINT_T0);
            v[r] = load32w(row, i, n, fp);
        }
        for (int j = 0; j < xr; j++) {
            __m512bh xv = (__m512bh)load32h(x + j * ldx, i, n);
            for (int r = 0; r < wr; r++) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], v[r], xv);
        }
    }
    for (int r = 0; r < wr; r++)
        for (int j = 0; j < xr; j++) out[r][j] = _mm512_reduce_add_ps(acc[r][j]);
}

INLINE void tile_pairs_fixed(const uint16_t *x, size_t ldx, int xr, const void *w, size_t ldw, int wr, int n,
                             float out[4][8], int fp) {
    if (0) {}
    SHAPE(tile_pairs, 4, 1); SHAPE(tile_pairs, 4, 2); SHAPE(tile_pairs, 4, 3);
    SHAPE(tile_pairs, 4, 4); SHAPE(tile_pairs, 4, 5); SHAPE(tile_pairs, 4, 6);
    else tile_pairs(x, ldx, xr, w, ldw, wr, n, out, fp);
}

#endif

/* The tiles of y = x @ (scale * W).T (or y += that with `accumulate`, a residual add in the same pass
 * over y): OpenMP over blocks of OUT_BLOCK outputs, in each, x's rows in groups of xt against weight
 * rows in groups of wt. With `xb` (x rounded to bf16, AVX512_BF16) the tiles multiply in pairs. */
INLINE void tiles(const float *x, const uint16_t *xb, const void *w, const float *scale, float *y, int m, int in,
                  int out, int accumulate, int threads, int fp, int xt, int wt) {
    size_t es = fp == FP32 ? 4 : fp == BF16 ? 2 : 1;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int ob = 0; ob < (out + OUT_BLOCK - 1) / OUT_BLOCK; ob++) {
        int o_end = (ob + 1) * OUT_BLOCK < out ? (ob + 1) * OUT_BLOCK : out;
        float d[4][8];
        for (int r0 = 0; r0 < m; r0 += xt) {
            int xr = m - r0 < xt ? m - r0 : xt;
            for (int o = ob * OUT_BLOCK; o < o_end; o += wt) {
                int wr = o_end - o < wt ? o_end - o : wt;
                const char *wo = (const char *)w + (size_t)o * in * es;
#ifdef __AVX512BF16__
                if (xb)
                    tile_pairs_fixed(xb + (size_t)r0 * in, (size_t)in, xr, wo, (size_t)in, wr, in, d, fp);
                else
#endif
                    tile_fixed(x + (size_t)r0 * in, (size_t)in, xr, wo, (size_t)in, wr, in, d, fp);
                for (int r = 0; r < wr; r++)
                    for (int j = 0; j < xr; j++) {
                        float v = scale ? d[r][j] * scale[o + r] : d[r][j];
                        size_t at = (size_t)(r0 + j) * out + o + r;
                        y[at] = accumulate ? y[at] + v : v;
                    }
            }
        }
    }
}

/* Weights widened to fp32, x in fp32. Up to 4 rows of x: tiles of 4 weight rows x those rows; more:
 * tiles of 2 weight rows x 8 rows of x (16 accumulators either way), so a weight chunk is widened
 * once per 8 rows. */
INLINE void product(const float *x, const void *w, const float *scale, float *y, int m, int in, int out,
                    int accumulate, int threads, int fp) {
    tiles(x, NULL, w, scale, y, m, in, out, accumulate, threads, fp, m <= 4 ? 4 : 8, m <= 4 ? 4 : 2);
}

#ifdef __AVX512BF16__
/* bf16 or int8 weights in pairs with x rounded to bf16: tiles of 4 weight rows x XT_PAIRS rows of x. */
INLINE void product_pairs(const float *x, const void *w, const float *scale, float *y, int m, int in, int out,
                          int accumulate, int threads, int fp) {
    size_t need = (size_t)m * in;
    if (need > xb_cap) {
        free(xb_buf);
        xb_buf = (uint16_t *)malloc(need * 2 * sizeof(uint16_t));
        xb_cap = xb_buf ? need * 2 : 0;
    }
    if (!xb_buf) {  /* out of memory for the rounded rows: widen the weights instead (slower, correct) */
        product(x, w, scale, y, m, in, out, accumulate, threads, fp);
        return;
    }
    for (size_t i = 0; i < need; i += 16) {  /* round to nearest even, 16 at a time */
        __mmask16 k = need - i >= 16 ? 0xffff : (__mmask16)((1u << (need - i)) - 1);
        __m256bh h = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(k, x + i));
        _mm256_mask_storeu_epi16(xb_buf + i, k, (__m256i)h);
    }
    tiles(x, xb_buf, w, scale, y, m, in, out, accumulate, threads, fp, XT_PAIRS, 4);
}
#endif

/* Whether bf16 and int8 weights multiply x rounded to bf16 (AVX512_BF16 pairs) rather than x in fp32. */
int bf16_pairs(void) {
#ifdef __AVX512BF16__
    return 1;
#else
    return 0;
#endif
}

#ifdef __AVX512BF16__
#define NARROW product_pairs  /* bf16 and int8 weights: in pairs */
#else
#define NARROW product
#endif

/* The product for a weight kind known only at run time: each branch is a product compiled for one
 * kind. `scale` is read for INT8 only. */
void product_of_kind(int kind, const float *x, const void *w, const float *scale, float *y, int m, int in,
                     int out, int accumulate, int threads) {
    if (kind == INT8)
        NARROW(x, w, scale, y, m, in, out, accumulate, threads, INT8);
    else if (kind == BF16)
        NARROW(x, w, NULL, y, m, in, out, accumulate, threads, BF16);
    else
        product(x, w, NULL, y, m, in, out, accumulate, threads, FP32);
}

/* y = x @ (scale * W).T: an int8 layer (`scale` per output) or a float output layer. */
void linear(const float *x, const void *w, int kind, const float *scale, float *y, int m, int in, int out,
            int threads) {
    product_of_kind(kind, x, w, scale, y, m, in, out, 0, threads);
}

/* The row operations around the products, one row at a time, the same way whatever m is. */
void rmsnorm_rows(const float *x, const float *norm, float eps, float *dst, int m, int n) {
    for (int r = 0; r < m; r++) {
        const float *src = x + (size_t)r * n;
        float *d = dst + (size_t)r * n;
        double ss = 0.0;  /* double: the sum of squares of a few thousand floats, without drift */
        for (int i = 0; i < n; i++) ss += (double)src[i] * src[i];
        float inv = 1.0f / sqrtf((float)(ss / n) + eps);
        for (int i = 0; i < n; i++) d[i] = norm[i] * (src[i] * inv);
    }
}

void silu_gate_rows(const float *x, float *dst, int m, int n) {
    for (int r = 0; r < m; r++) {
        const float *g = x + (size_t)r * 2 * n, *u = g + n;
        float *d = dst + (size_t)r * n;
        for (int i = 0; i < n; i++) d[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
    }
}

/* out (O, I) fp32 = scale[o] * W[o, i]: the weights of a long pass (a prompt), multiplied by MKL
 * afterwards (torch's `w.float() * scale` took 2.5 ms for a 1536x576 layer here, this about 0.2). */
void int8_dequantize(const int8_t *w, const float *scale, float *out, int out_rows, int in, int threads) {
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int o = 0; o < out_rows; o++) {
        const int8_t *wr = w + (size_t)o * in;
        float *dst = out + (size_t)o * in, s = scale[o];
        for (int i = 0; i < in; i++) dst[i] = (float)wr[i] * s;
    }
}
