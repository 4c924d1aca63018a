/* y (M, O) = x (M, I) @ (scale (O,) * W (O, I) int8).T, fp32 activations, fp32 out.
 *
 * Why by hand: at batch 1 a decoding step is matrix-vector products bound by reading the weights,
 * and torch's int8 weight-only kernels (_weight_int8pack_mm, _int_mm, fbgemm's dynamic linear) read
 * about 9-10 GB/s on this CPU out of cache, where MKL's fp32 product reads 21: they are bound by
 * converting the weights, not by reading them. Here each 64-byte line of W is widened to fp32 in
 * registers once and multiplied into up to four rows of x, with the lines a few KB ahead
 * prefetched (measured here, 2 threads, the 120 products of SmolLM2-135M's decoder layers: 9.2 ms
 * without the prefetch, about 4-6 ms with it; torch's kernel 11.9 ms).
 *
 * Exactness: a row's result never depends on how many rows are multiplied with it, which block of
 * four it falls in, or which thread computes it (the same sequence of operations per (row,
 * output)), so a speculative verification pass of k+1 tokens gives, bit for bit, the products
 * one-token steps give.
 *
 * Threads: the outputs are split over torch's OpenMP pool (the library is linked to the libgomp
 * torch loaded), so the kernel runs on torch's threads and no second pool spins against them.
 */
#include <stdint.h>
#include <stddef.h>
#include <math.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

#define PREFETCH 4096  /* bytes ahead: measured 256 -> 10.7 GB/s, 1024 -> 17, 4096 -> 18-26 */
#define OUT_BLOCK 16   /* outputs per OpenMP task */

#ifdef __AVX512F__
static inline __m512 widen(__m512i wb, int part) {
    __m128i q = part == 0 ? _mm512_castsi512_si128(wb)
              : part == 1 ? _mm512_extracti32x4_epi32(wb, 1)
              : part == 2 ? _mm512_extracti32x4_epi32(wb, 2) : _mm512_extracti32x4_epi32(wb, 3);
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q));
}

/* dots of one weight row with `rows` (1..4) rows of x; every row gets the same operations. */
static void dot_rows(const float *x, size_t ldx, int rows, const int8_t *w, int n, float *out) {
    __m512 acc[4][4];
    for (int r = 0; r < 4; r++)
        for (int j = 0; j < 4; j++) acc[r][j] = _mm512_setzero_ps();
    int i = 0;
    for (; i + 64 <= n; i += 64) {
        _mm_prefetch((const char *)(w + i + PREFETCH), _MM_HINT_T0);
        __m512i wb = _mm512_loadu_si512((const void *)(w + i));
        __m512 w0 = widen(wb, 0), w1 = widen(wb, 1), w2 = widen(wb, 2), w3 = widen(wb, 3);
        for (int r = 0; r < rows; r++) {
            const float *xr = x + r * ldx + i;
            acc[r][0] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xr), acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xr + 16), acc[r][1]);
            acc[r][2] = _mm512_fmadd_ps(w2, _mm512_loadu_ps(xr + 32), acc[r][2]);
            acc[r][3] = _mm512_fmadd_ps(w3, _mm512_loadu_ps(xr + 48), acc[r][3]);
        }
    }
    for (; i + 16 <= n; i += 16) {
        __m512 w0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(w + i))));
        for (int r = 0; r < rows; r++) acc[r][0] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + r * ldx + i), acc[r][0]);
    }
    for (int r = 0; r < rows; r++) {
        float s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[r][0], acc[r][1]),
                                                     _mm512_add_ps(acc[r][2], acc[r][3])));
        for (int t = i; t < n; t++) s += x[r * ldx + t] * (float)w[t];
        out[r] = s;
    }
}

/* One row of x against four weight rows (the m = 1 decoding step): x is loaded once per chunk for
 * four outputs, and four weight streams are in flight. Each output gets exactly the operations
 * dot_rows gives it, so results are the same bits either way. */
static void dot4(const float *x, const int8_t *w, size_t ldw, int n, float *out) {
    __m512 acc[4][4];
    for (int r = 0; r < 4; r++)
        for (int j = 0; j < 4; j++) acc[r][j] = _mm512_setzero_ps();
    int i = 0;
    for (; i + 64 <= n; i += 64) {
        __m512 x0 = _mm512_loadu_ps(x + i), x1 = _mm512_loadu_ps(x + i + 16);
        __m512 x2 = _mm512_loadu_ps(x + i + 32), x3 = _mm512_loadu_ps(x + i + 48);
        for (int r = 0; r < 4; r++) {
            const int8_t *wr = w + r * ldw + i;
            _mm_prefetch((const char *)(wr + PREFETCH), _MM_HINT_T0);
            __m512i wb = _mm512_loadu_si512((const void *)wr);
            acc[r][0] = _mm512_fmadd_ps(widen(wb, 0), x0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(widen(wb, 1), x1, acc[r][1]);
            acc[r][2] = _mm512_fmadd_ps(widen(wb, 2), x2, acc[r][2]);
            acc[r][3] = _mm512_fmadd_ps(widen(wb, 3), x3, acc[r][3]);
        }
    }
    for (; i + 16 <= n; i += 16) {
        __m512 x0 = _mm512_loadu_ps(x + i);
        for (int r = 0; r < 4; r++)
            acc[r][0] = _mm512_fmadd_ps(
                _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(w + r * ldw + i)))), x0,
                acc[r][0]);
    }
    for (int r = 0; r < 4; r++) {
        float s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[r][0], acc[r][1]),
                                                     _mm512_add_ps(acc[r][2], acc[r][3])));
        for (int t = i; t < n; t++) s += x[t] * (float)w[r * ldw + t];
        out[r] = s;
    }
}
#else
static void dot4(const float *x, const int8_t *w, size_t ldw, int n, float *out) {
    for (int r = 0; r < 4; r++) {
        float s = 0.0f;
        for (int t = 0; t < n; t++) s += x[t] * (float)w[r * ldw + t];
        out[r] = s;
    }
}

static void dot_rows(const float *x, size_t ldx, int rows, const int8_t *w, int n, float *out) {
    for (int r = 0; r < rows; r++) {
        float s = 0.0f;
        for (int t = 0; t < n; t++) s += x[r * ldx + t] * (float)w[t];
        out[r] = s;
    }
}
#endif

/* The product alone: y = x @ (scale * W).T. With `accumulate`, y += that (a residual add done in
 * the same pass over y). */
static void product(const float *x, const int8_t *w, const float *scale, float *y, int m, int in, int out,
                    int accumulate, int threads) {
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int ob = 0; ob < (out + OUT_BLOCK - 1) / OUT_BLOCK; ob++) {
        int o_end = (ob + 1) * OUT_BLOCK < out ? (ob + 1) * OUT_BLOCK : out;
        float d[4];
        int o = ob * OUT_BLOCK;
        if (m == 1) {
            for (; o + 4 <= o_end; o += 4) {
                dot4(x, w + (size_t)o * in, (size_t)in, in, d);
                for (int r = 0; r < 4; r++) {
                    float v = d[r] * scale[o + r];
                    y[o + r] = accumulate ? y[o + r] + v : v;
                }
            }
        }
        for (; o < o_end; o++) {
            for (int r0 = 0; r0 < m; r0 += 4) {
                int rows = m - r0 < 4 ? m - r0 : 4;
                dot_rows(x + (size_t)r0 * in, (size_t)in, rows, w + (size_t)o * in, in, d);
                for (int r = 0; r < rows; r++) {
                    float v = d[r] * scale[o];
                    y[(size_t)(r0 + r) * out + o] = accumulate ? y[(size_t)(r0 + r) * out + o] + v : v;
                }
            }
        }
    }
}

void int8_linear(const float *x, const int8_t *w, const float *scale, float *y, int m, int in, int out,
                 int threads) {
    product(x, w, scale, y, m, in, out, 0, threads);
}

/* A decoder layer's products with the small operations around them folded in, so that a decoding
 * step is a few calls per layer instead of a dozen tensor operations (each a dispatch of several
 * microseconds on a vector of a few hundred numbers):
 *   mode 0: y = rmsnorm(x) @ W.T         (x (m, in); norm = weight * x / sqrt(mean(x^2) + eps))
 *   mode 1: y += x @ W.T                 (the attention output's projection and the residual add)
 *   mode 2: y += (silu(g) * u) @ W.T     (x = [g | u], (m, 2 in): the MLP's down projection and add)
 * Modes 0 and 2 prepare their input into `work` (m, in) first, one row at a time, the same way
 * whatever m is. */
void int8_layer_op(int mode, const float *x, const float *norm, float eps, const int8_t *w, const float *scale,
                   float *y, float *work, int m, int in, int out, int threads) {
    for (int r = 0; r < m; r++) {
        float *dst = work + (size_t)r * in;
        if (mode == 0) {
            const float *src = x + (size_t)r * in;
            double ss = 0.0;  /* double: the sum of squares of a few thousand floats, without drift */
            for (int i = 0; i < in; i++) ss += (double)src[i] * src[i];
            float inv = 1.0f / sqrtf((float)(ss / in) + eps);
            for (int i = 0; i < in; i++) dst[i] = norm[i] * (src[i] * inv);
        } else if (mode == 2) {
            const float *g = x + (size_t)r * 2 * in, *u = g + in;
            for (int i = 0; i < in; i++) dst[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
        }
    }
    product(mode == 1 ? x : work, w, scale, y, m, in, out, mode != 0, threads);
}

/* 1 when the build took the AVX-512 path, 0 for the portable loop. */
int int8_linear_vectorised(void) {
#ifdef __AVX512F__
    return 1;
#else
    return 0;
#endif
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
