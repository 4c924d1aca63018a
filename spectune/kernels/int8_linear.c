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
#else
static void dot_rows(const float *x, size_t ldx, int rows, const int8_t *w, int n, float *out) {
    for (int r = 0; r < rows; r++) {
        float s = 0.0f;
        for (int t = 0; t < n; t++) s += x[r * ldx + t] * (float)w[t];
        out[r] = s;
    }
}
#endif

void int8_linear(const float *x, const int8_t *w, const float *scale, float *y, int m, int in, int out,
                 int threads) {
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int ob = 0; ob < (out + OUT_BLOCK - 1) / OUT_BLOCK; ob++) {
        int o_end = (ob + 1) * OUT_BLOCK < out ? (ob + 1) * OUT_BLOCK : out;
        float d[4];
        for (int o = ob * OUT_BLOCK; o < o_end; o++) {
            for (int r0 = 0; r0 < m; r0 += 4) {
                int rows = m - r0 < 4 ? m - r0 : 4;
                dot_rows(x + (size_t)r0 * in, (size_t)in, rows, w + (size_t)o * in, in, d);
                for (int r = 0; r < rows; r++) y[(size_t)(r0 + r) * out + o] = d[r] * scale[o];
            }
        }
    }
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
