/* A whole decoding step of a Llama-family decoder stack in one call: every layer's products
 * (linear.c), RoPE, the KV cache append and attention, with no Python between them.
 *
 * Why: with the products in C, what was left of a SmolLM2-135M step in Python and small tensor
 * operations (per layer: RoPE, the cache append, SDPA and the reshapes around it, three kernel
 * calls) cost 8-11 ms a step, as much as reading the weights of a bf16 layer stack. Here it is one
 * call per step; the caller (decode/lean_llama.py) only makes room in the cache buffers first.
 *
 * Layout: x (m = B*T, hidden) fp32, row b*T + t, updated in place (the residual stream); a ragged
 * pass (rows of a batch verifying different numbers of drafts) feeds only its real positions. Key and
 * value buffers per layer (B, KV, cap, D) fp32; columns [0, past) hold the cache, the step writes
 * [past, past + T). cos and sin (B, T, D) are RoPE's tables with sin's first half negated
 * (rotate_half(x) * sin == roll(x, D/2) * that), as the Python forward uses them. `cols` (B, past + T),
 * optional: 1 where a column may be attended (left padding, masked rejected drafts); query t of row
 * b always sees its own column and never one after it. `tree` (B, T, T), optional: a pass verifying
 * a tree of drafts (several candidate continuations at once, decode/lookup_tree.py), laid out
 * parents first; tree[b][t][j] is 1 where position j of the pass is t's ancestor (or t itself):
 * query t sees the cache and its own branch, not its siblings'.
 *
 * Exactness: each (row, head, query) is computed by the same operations in the same order whatever
 * T, B or the thread, like the products, so a verification pass of k+1 tokens gives the logits k+1
 * one-token steps give, bit for bit (tested), and speculative output equals plain output. So does
 * a tree pass: another branch's columns are masked, and a masked column adds exact zeros (exp_sum).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

#include "kernels.h"

/* q . k over D elements: 16-wide partial sums in one accumulator, reduced, then a scalar tail. */
static inline float dot(const float *a, const float *b, int d) {
    int i = 0;
    float s = 0.0f;
#ifdef __AVX512F__
    __m512 acc = _mm512_setzero_ps();
    for (; i + 16 <= d; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc);
    s = _mm512_reduce_add_ps(acc);
#endif
    for (; i < d; i++) s += a[i] * b[i];
    return s;
}

#ifdef __AVX512F__
/* Lane j of the result: the sum of v[j]'s 16 lanes (a transpose-and-add tree, 16 sums at the cost
 * of about two). */
static inline __m512 sum16(const __m512 v[16]) {
    __m512 y[4];
    for (int g = 0; g < 4; g++) {
        const __m512 *a = v + 4 * g;
        __m512 x01 = _mm512_add_ps(_mm512_unpacklo_ps(a[0], a[1]), _mm512_unpackhi_ps(a[0], a[1]));
        __m512 x23 = _mm512_add_ps(_mm512_unpacklo_ps(a[2], a[3]), _mm512_unpackhi_ps(a[2], a[3]));
        y[g] = _mm512_add_ps(_mm512_shuffle_ps(x01, x23, _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_ps(x01, x23, _MM_SHUFFLE(3, 2, 3, 2)));
    }
    __m512 w0 = _mm512_add_ps(_mm512_shuffle_f32x4(y[0], y[1], _MM_SHUFFLE(1, 0, 1, 0)),
                              _mm512_shuffle_f32x4(y[0], y[1], _MM_SHUFFLE(3, 2, 3, 2)));
    __m512 w1 = _mm512_add_ps(_mm512_shuffle_f32x4(y[2], y[3], _MM_SHUFFLE(1, 0, 1, 0)),
                              _mm512_shuffle_f32x4(y[2], y[3], _MM_SHUFFLE(3, 2, 3, 2)));
    return _mm512_add_ps(_mm512_shuffle_f32x4(w0, w1, _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(w0, w1, _MM_SHUFFLE(3, 1, 3, 1)));
}

/* out[j] = q . keys[j] for 16 consecutive keys (d a multiple of 16). */
static inline __m512 dot16(const float *q, const float *keys, int d) {
    __m512 acc[16];
    for (int j = 0; j < 16; j++) acc[j] = _mm512_setzero_ps();
    for (int i = 0; i < d; i += 16) {
        __m512 qv = _mm512_loadu_ps(q + i);
        for (int j = 0; j < 16; j++) acc[j] = _mm512_fmadd_ps(qv, _mm512_loadu_ps(keys + (size_t)j * d + i), acc[j]);
    }
    return sum16(acc);
}
#endif

/* dst[i] = src[i] * cos[i] + src[(i + D/2) % D] * sin[i] (sin sign-folded): RoPE on one head. */
static inline void rope(const float *src, const float *cos, const float *sin, float *dst, int d) {
    int half = d / 2;
    for (int i = 0; i < d; i++) {
        float a = src[i] * cos[i], b = src[(i + half) % d] * sin[i];
        dst[i] = a + b;
    }
}

/* RoPE on q (into q_out (m, H, D)) and k, and k, v written into the cache buffers at past + t, for the
 * m rows fed (row i is position rows[i] = b*T + t of the pass, or i itself when rows is NULL). A
 * position not fed (padding of a ragged pass) gets zero keys and values: its column is masked, and
 * zeros keep whatever the buffer held before (possibly not a number) out of the masked sums. */
static void rope_append(const float *qkv, const float *cos, const float *sin, float *q_out, float *kbuf,
                        float *vbuf, int b_n, int t_n, int heads, int kv, int d, int cap, int past,
                        const int *rows, int m) {
    int width = (heads + 2 * kv) * d;
    if (rows) {
        for (int b = 0; b < b_n; b++)
            for (int t = 0; t < t_n; t++)
                for (int h = 0; h < kv; h++) {
                    size_t at = (((size_t)b * kv + h) * cap + past + t) * d;
                    for (int i = 0; i < d; i++) kbuf[at + i] = vbuf[at + i] = 0.0f;
                }
    }
    for (int i = 0; i < m; i++) {
        int flat = rows ? rows[i] : i, b = flat / t_n, t = flat % t_n;
        const float *row = qkv + (size_t)i * width;
        const float *c = cos + (size_t)flat * d, *s = sin + (size_t)flat * d;
        for (int h = 0; h < heads; h++) rope(row + h * d, c, s, q_out + ((size_t)i * heads + h) * d, d);
        for (int h = 0; h < kv; h++) {
            size_t at = (((size_t)b * kv + h) * cap + past + t) * d;
            rope(row + (heads + h) * d, c, s, kbuf + at, d);
            const float *v = row + (heads + kv + h) * d;
            for (int j = 0; j < d; j++) vbuf[at + j] = v[j];
        }
    }
}

#ifdef __AVX512F__
/* e^x for 16 lanes (x <= 0 here: scores minus their maximum): Cephes' expf, range reduction by
 * ln 2 and a degree-6 polynomial, about 1 ulp; lanes below -87.3 (masked columns) give 0. */
static inline __m512 exp16(__m512 x) {
    __mmask16 tiny = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.3f), _CMP_LT_OQ);
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.3f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    __m512 y = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), _mm512_set1_ps(1.0f));
    return _mm512_maskz_mov_ps(~tiny, _mm512_scalef_ps(y, n));
}
#endif

#ifdef __AVX512F__
/* q . key for one key, bit for bit what dot16 gives that key in its lane (the same FMAs, then
 * sum16's tree over the lanes: other vectors' lanes never mix with this one's), so a column's score
 * does not depend on whether it falls in a block of 16 or the tail. */
static inline float dot1(const float *q, const float *key, int d) {
    __m512 acc[16];
    acc[0] = _mm512_setzero_ps();
    for (int j = 1; j < 16; j++) acc[j] = acc[0];
    for (int i = 0; i < d; i += 16) acc[0] = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), _mm512_loadu_ps(key + i), acc[0]);
    return _mm512_cvtss_f32(sum16(acc));
}
#endif

/* scores[0..n) = exp(scores - top) in place; returns their sum. Every column the same way whatever
 * its place: exp16 over blocks of 16 and a masked block for the tail, and the sum taken column by
 * column in order. A masked column adds an exact zero, so a row's sum is the same bits with left
 * padding or holes (rejected drafts of a batch) as alone, where its cache has neither: the blocks'
 * lane sums would group columns by their absolute position. */
static inline float exp_sum(float *scores, int n, float top) {
    int c = 0;
    float sum = 0.0f;
#ifdef __AVX512F__
    __m512 t = _mm512_set1_ps(top);
    for (; c < n; c += 16) {
        __mmask16 k = n - c >= 16 ? 0xffff : (__mmask16)((1u << (n - c)) - 1);
        __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, scores + c), t));
        _mm512_mask_storeu_ps(scores + c, k, e);
    }
    for (c = 0; c < n; c++) sum += scores[c];
#else
    for (; c < n; c++) {
        scores[c] = scores[c] == -INFINITY ? 0.0f : expf(scores[c] - top);
        sum += scores[c];
    }
#endif
    return sum;
}

/* out (m, H*D): softmax(q k^T * scale) v for every (row, head, query), grouped-query heads sharing
 * their key/value head. Each (row, head, query) is one task, its columns in order. */
static void attend(const float *q, const float *kbuf, const float *vbuf, const uint8_t *cols,
                   const uint8_t *tree, float *out, float scale, int b_n, int t_n, int heads, int kv, int d,
                   int cap, int past, const int *rows, int m, int threads) {
    int total = past + t_n, group = heads / kv;
    #pragma omp parallel num_threads(threads)
    {
        float *scores = malloc(sizeof(float) * (size_t)total);
        #pragma omp for schedule(static)
        for (int item = 0; item < m * heads; item++) {
            int h = item % heads, row = item / heads, flat = rows ? rows[row] : row, b = flat / t_n, t = flat % t_n;
            const float *qv = q + ((size_t)row * heads + h) * d;
            const float *keys = kbuf + ((size_t)b * kv + h / group) * cap * d;
            const float *vals = vbuf + ((size_t)b * kv + h / group) * cap * d;
            const uint8_t *seen = cols ? cols + (size_t)b * total : NULL;
            const uint8_t *branch = tree ? tree + ((size_t)b * t_n + t) * t_n : NULL;  /* (T,): its ancestors */
            int last = past + t;  /* its own column: the last it may see */
            float top = -INFINITY;
            int c = 0;
#ifdef __AVX512F__
            /* Blocks of 16 columns from column 0, then one at a time (dot1: the same bits as in a
             * block), so a column's score depends on neither `last` nor the padding before it. */
            if (d % 16 == 0) {
                __m512 s = _mm512_set1_ps(scale), best = _mm512_set1_ps(-INFINITY);
                for (; c + 16 <= last + 1; c += 16) {
                    __m512 sc = _mm512_mul_ps(dot16(qv, keys + (size_t)c * d, d), s);
                    _mm512_storeu_ps(scores + c, sc);
                    best = _mm512_max_ps(best, sc);
                }
                top = _mm512_reduce_max_ps(best);
            }
#endif
            for (; c <= last; c++) {
#ifdef __AVX512F__
                scores[c] = (d % 16 == 0 ? dot1(qv, keys + (size_t)c * d, d) : dot(qv, keys + (size_t)c * d, d)) * scale;
#else
                scores[c] = dot(qv, keys + (size_t)c * d, d) * scale;
#endif
                if (scores[c] > top) top = scores[c];
            }
            if (seen || branch) {  /* masked columns (never its own) count for nothing; the maximum among the rest */
                top = -INFINITY;
                for (c = 0; c <= last; c++) {
                    int hidden = (seen && !seen[c]) || (branch && c >= past && !branch[c - past]);
                    if (hidden && c != last) scores[c] = -INFINITY;
                    else if (scores[c] > top) top = scores[c];
                }
            }
            float inv = 1.0f / exp_sum(scores, last + 1, top);
            float *o = out + ((size_t)row * heads + h) * d;
            int i = 0;
#ifdef __AVX512F__
            for (; i + 64 <= d; i += 64) {  /* four lanes of 16 per pass over the values */
                __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
                for (int c = 0; c <= last; c++) {
                    __m512 p = _mm512_set1_ps(scores[c]);
                    const float *v = vals + (size_t)c * d + i;
                    a0 = _mm512_fmadd_ps(p, _mm512_loadu_ps(v), a0);
                    a1 = _mm512_fmadd_ps(p, _mm512_loadu_ps(v + 16), a1);
                    a2 = _mm512_fmadd_ps(p, _mm512_loadu_ps(v + 32), a2);
                    a3 = _mm512_fmadd_ps(p, _mm512_loadu_ps(v + 48), a3);
                }
                __m512 s = _mm512_set1_ps(inv);
                _mm512_storeu_ps(o + i, _mm512_mul_ps(a0, s));
                _mm512_storeu_ps(o + i + 16, _mm512_mul_ps(a1, s));
                _mm512_storeu_ps(o + i + 32, _mm512_mul_ps(a2, s));
                _mm512_storeu_ps(o + i + 48, _mm512_mul_ps(a3, s));
            }
            for (; i + 16 <= d; i += 16) {
                __m512 acc = _mm512_setzero_ps();
                for (int c = 0; c <= last; c++)
                    acc = _mm512_fmadd_ps(_mm512_set1_ps(scores[c]), _mm512_loadu_ps(vals + (size_t)c * d + i), acc);
                _mm512_storeu_ps(o + i, _mm512_mul_ps(acc, _mm512_set1_ps(inv)));
            }
#endif
            for (; i < d; i++) {
                float acc = 0.0f;
                for (int c = 0; c <= last; c++) acc += scores[c] * vals[(size_t)c * d + i];
                o[i] = acc * inv;
            }
        }
        free(scores);
    }
}

/* The decoder layers over x in place: x holds the m rows fed, (m, hidden); `rows` (m), optional, says
 * which position b*T + t of the pass each is (a ragged pass feeds fewer than B*T: see rope_append),
 * NULL for all B*T in order. Per layer l: norms[2l], norms[2l+1] (fp32, hidden); weights
 * w[4l..4l+3] = fused q/k/v (out (H+2KV)*D), o (hidden), fused gate/up (2*inter), down (hidden), all
 * of one `kind`, with scales s[...] for INT8 (NULL entries otherwise); keys[l], values[l] its
 * cache buffers, caps[l] columns wide. */
void decode_layers(int layers, float *x, int b_n, int t_n, int hidden, const float *const *norms, float eps,
                   const void *const *w, const float *const *s, int kind, int heads, int kv, int d, int inter,
                   float *const *keys, float *const *values, const int *caps, int past, const float *cos,
                   const float *sin, const uint8_t *cols, const uint8_t *tree, float scale, const int *rows, int fed,
                   int threads) {
    int m = rows ? fed : b_n * t_n, qkv_w = (heads + 2 * kv) * d;
    int widest = qkv_w > 2 * inter ? qkv_w : 2 * inter;
    float *normed = malloc(sizeof(float) * (size_t)m * hidden);
    float *wide = malloc(sizeof(float) * (size_t)m * widest);        /* q/k/v, then gate/up */
    float *q = malloc(sizeof(float) * (size_t)m * heads * d);
    float *att = malloc(sizeof(float) * (size_t)m * heads * d);
    float *gated = malloc(sizeof(float) * (size_t)m * inter);
    for (int l = 0; l < layers; l++) {
        rmsnorm_rows(x, norms[2 * l], eps, normed, m, hidden);
        product_of_kind(kind, normed, w[4 * l], s[4 * l], wide, m, hidden, qkv_w, 0, threads);
        rope_append(wide, cos, sin, q, keys[l], values[l], b_n, t_n, heads, kv, d, caps[l], past, rows, m);
        attend(q, keys[l], values[l], cols, tree, att, scale, b_n, t_n, heads, kv, d, caps[l], past, rows, m, threads);
        product_of_kind(kind, att, w[4 * l + 1], s[4 * l + 1], x, m, heads * d, hidden, 1, threads);
        rmsnorm_rows(x, norms[2 * l + 1], eps, normed, m, hidden);
        product_of_kind(kind, normed, w[4 * l + 2], s[4 * l + 2], wide, m, hidden, 2 * inter, 0, threads);
        silu_gate_rows(wide, gated, m, inter);
        product_of_kind(kind, gated, w[4 * l + 3], s[4 * l + 3], x, m, inter, hidden, 1, threads);
    }
    free(normed);
    free(wide);
    free(q);
    free(att);
    free(gated);
}
