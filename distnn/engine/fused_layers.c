/* The elementwise work of feed-forward and backprop (network.py, activations.py,
 * losses.py), each chain of NumPy passes as ONE pass.
 *
 * Why: on a small network (64-32-10, batch 32) each NumPy call costs about 0.5 µs, more
 * than its arithmetic, and the sigmoid alone is four calls per layer; the bias addition
 * broadcasts b over the rows, which costs NumPy about three calls' worth. A call here
 * costs about one ufunc call, so a chain of k calls becomes one.
 *
 * The same bits as the NumPy passes, for the reasons fused_updates.c gives: the same
 * IEEE-754 operations (+, −, ×, all correctly rounded) on the same operands in the same
 * order, in the arrays' own precision; built with -ffp-contract=off, never -ffast-math.
 * tanh stays NumPy's np.tanh (its float32 SIMD code is not libm's tanhf), so the sigmoid
 * is two calls here around NumPy's tanh. tests/test_fused_layers.py compares feed-forward
 * and backprop with and without these kernels bit for bit.
 *
 * Every kernel takes one pointer to a `layer_call`, built once per workspace view by
 * distnn/engine/bound_layers.py: ctypes converts each argument of a call, and a call with
 * one pointer argument costs about half of one with seven.
 *
 * Layout: `blocks` blocks (the pieces of a --deterministic stack, else 1), each `rows`
 * rows of `cols` contiguous elements, rows contiguous within a block (a workspace's
 * leading rows); block k of array i starts stride[i] elements after block k − 1.
 */
#include "fused_layers.h"

/* One copy of each loop per vector width, chosen at load time (as in fused_updates.c). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define VECTOR_WIDTHS __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define VECTOR_WIDTHS
#endif

#define BLOCK(T, c, i, k) ((T *)(c)->array[i] + (k) * (c)->stride[i])

/* The factors f(x) of σ̇, each the NumPy passes' operations in their order (one rounding
 * each: built with -ffp-contract=off, nothing is fused or reordered). */
#define SIGMOID_FACTOR(T, x) (((T)1 - (x)) * (x))          /* (1 − a)·a */
#define TANH_FACTOR(T, x) ((T)1 - (x) * (x))               /* 1 − a·a */
/* np.greater's 1 or 0, then the product: δ·0 keeps δ's sign, inf·0 is NaN, as in NumPy */
#define RELU_FACTOR(T, x) ((x) > (T)0 ? (T)1 : (T)0)
#define LEAKY_FACTOR(T, x) (RELU_FACTOR(T, x) * one_minus_alpha + alpha) /* [z>0]·(1−α) + α */
#define SIGMOID_TAIL_FACTOR(T, x) (((x) + (T)1) * (T)0.5)  /* (t + 1)·0.5 */
#define LEAKY_CONSTANTS(T) const T alpha = (T)c->slope, one_minus_alpha = (T)(1.0 - c->slope);

/* One σ̇ kernel: δ ← δ·s if the call is scaled (the output layer: the loss's factor
 * first), then δ ← δ·FACTOR(x) for the element x of array 1 (a or z). */
#define DEFINE_DERIVATIVE(T, SUFFIX, NAME, SETUP, FACTOR)                                    \
    VECTOR_WIDTHS void NAME##_##SUFFIX(const layer_call *c)                                 \
    {                                                                                       \
        const ptrdiff_t n = c->rows * c->cols;                                              \
        const T s = (T)c->scale;                                                            \
        const int scaled = c->scaled;                                                       \
        SETUP                                                                               \
        for (ptrdiff_t k = 0; k < c->blocks; k++) {                                         \
            T *restrict d = BLOCK(T, c, 0, k);                                              \
            const T *restrict x = BLOCK(T, c, 1, k);                                        \
            for (ptrdiff_t i = 0; i < n; i++) {                                             \
                T di = d[i];                                                                \
                if (scaled)                                                                 \
                    di = di * s;                                                            \
                d[i] = di * FACTOR(T, x[i]);                                                \
            }                                                                               \
        }                                                                                   \
    }

#define DEFINE_LAYER_KERNELS(T, SUFFIX)                                                     \
                                                                                            \
    /* z ← z + b, b broadcast over the rows (np.add(z, b, out=z)) */                        \
    VECTOR_WIDTHS void bias_add_##SUFFIX(const layer_call *c)                               \
    {                                                                                       \
        const T *restrict b = c->bias;                                                      \
        for (ptrdiff_t k = 0; k < c->blocks; k++) {                                         \
            T *restrict z = BLOCK(T, c, 0, k);                                              \
            for (ptrdiff_t r = 0; r < c->rows; r++, z += c->cols)                           \
                for (ptrdiff_t j = 0; j < c->cols; j++)                                     \
                    z[j] = z[j] + b[j];                                                     \
        }                                                                                   \
    }                                                                                       \
                                                                                            \
    /* z ← z + b;  out ← z·0.5: the bias and the sigmoid's head (z/2, before tanh) */       \
    VECTOR_WIDTHS void bias_half_##SUFFIX(const layer_call *c)                              \
    {                                                                                       \
        const T *restrict b = c->bias;                                                      \
        for (ptrdiff_t k = 0; k < c->blocks; k++) {                                         \
            T *restrict z = BLOCK(T, c, 0, k);                                              \
            T *restrict out = BLOCK(T, c, 1, k);                                            \
            for (ptrdiff_t r = 0; r < c->rows; r++, z += c->cols, out += c->cols)           \
                for (ptrdiff_t j = 0; j < c->cols; j++) {                                   \
                    T zj = z[j] + b[j];                                                     \
                    z[j] = zj;                                                              \
                    out[j] = zj * (T)0.5;                                                   \
                }                                                                           \
        }                                                                                   \
    }                                                                                       \
                                                                                            \
    /* a ← (a + 1)·0.5: the sigmoid's tail, after tanh */                                   \
    VECTOR_WIDTHS void sigmoid_tail_##SUFFIX(const layer_call *c)                           \
    {                                                                                       \
        const ptrdiff_t n = c->rows * c->cols;                                              \
        for (ptrdiff_t k = 0; k < c->blocks; k++) {                                         \
            T *restrict a = BLOCK(T, c, 0, k);                                              \
            for (ptrdiff_t i = 0; i < n; i++) {                                             \
                T t = a[i] + (T)1;                                                          \
                a[i] = t * (T)0.5;                                                          \
            }                                                                               \
        }                                                                                   \
    }                                                                                       \
                                                                                            \
    /* δ ← δ·s if scaled, then δ ← δ·f(x), x from array 1 (f's operations in the NumPy \
     * passes' order): σ̇ of sigmoid and tanh from a, of ReLU and leaky ReLU from z, and \
     * softplus's σ̇ (the sigmoid's tail of NumPy's t = tanh(z/2), t not written) */     \
    DEFINE_DERIVATIVE(T, SUFFIX, sigmoid_derivative, , SIGMOID_FACTOR)                      \
    DEFINE_DERIVATIVE(T, SUFFIX, tanh_derivative, , TANH_FACTOR)                            \
    DEFINE_DERIVATIVE(T, SUFFIX, relu_derivative, , RELU_FACTOR)                            \
    DEFINE_DERIVATIVE(T, SUFFIX, leaky_relu_derivative, LEAKY_CONSTANTS(T), LEAKY_FACTOR)   \
    DEFINE_DERIVATIVE(T, SUFFIX, sigmoid_tail_product, , SIGMOID_TAIL_FACTOR)               \
                                                                                            \
    /* δ ← (a − y)·s: cross-entropy's output delta (softmax's Jacobian folded in) */        \
    VECTOR_WIDTHS void scaled_difference_##SUFFIX(const layer_call *c)                      \
    {                                                                                       \
        const ptrdiff_t n = c->rows * c->cols;                                              \
        const T s = (T)c->scale;                                                            \
        for (ptrdiff_t k = 0; k < c->blocks; k++) {                                         \
            const T *restrict a = BLOCK(T, c, 0, k);                                        \
            const T *restrict y = BLOCK(T, c, 1, k);                                        \
            T *restrict d = BLOCK(T, c, 2, k);                                              \
            for (ptrdiff_t i = 0; i < n; i++) {                                             \
                T t = a[i] - y[i];                                                          \
                d[i] = t * s;                                                               \
            }                                                                               \
        }                                                                                   \
    }

DEFINE_LAYER_KERNELS(float, f32)
DEFINE_LAYER_KERNELS(double, f64)
