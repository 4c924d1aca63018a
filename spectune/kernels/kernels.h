/* What linear.c gives step.c. */
#ifndef SPECTUNE_KERNELS_H
#define SPECTUNE_KERNELS_H
enum { INT8 = 0, FP32 = 1, BF16 = 2 };  /* weight kinds: int8 with a scale per output, fp32, bf16 */

/* y (m, out) = x (m, in) @ (scale * W).T, or y += that with `accumulate`. */
void product_of_kind(int kind, const float *x, const void *w, const float *scale, float *y, int m, int in,
                     int out, int accumulate, int threads);
/* dst (m, n) = norm * (x / sqrt(mean(x^2) + eps)), row by row. */
void rmsnorm_rows(const float *x, const float *norm, float eps, float *dst, int m, int n);
/* dst (m, n) = silu(g) * u for x = [g | u] (m, 2 n). */
void silu_gate_rows(const float *x, float *dst, int m, int n);
#endif
