/* Backprop of a whole small network in ONE call: feed-forward, the loss's output delta and
 * sum, and every layer's gradient (network.py's backprop, MATH.md's dynamic program), for
 * every elementwise σ (sigmoid, tanh, identity, ReLU, leaky ReLU, softplus) with the
 * squared loss, or such hidden layers and a softmax output with cross-entropy.
 *
 * Why: on the default network (64-32-10, batch 32) a step's products take about 9 µs and
 * the twenty-odd Python and NumPy calls around them as long again. Here the same work is
 * one ctypes call.
 *
 * The same bits as network.py's NumPy path, because every operation is the one NumPy
 * runs, on the same operands, in the same order:
 * - each product is the BLAS call NumPy's ndarray.dot makes for these shapes and layouts
 *   (numpy/_core/src/common/cblasfuncs.c: gemm for matrix × matrix, gemv with CblasTrans
 *   for ones · Δ), through the very functions NumPy calls (numpy_routines.py finds them in
 *   the OpenBLAS NumPy loaded). ndarray.dot zeroes the output first, np.matmul does not;
 *   neither matters, as with β = 0 BLAS never reads the output (reference BLAS sets it to
 *   zero), so this call skips that pass;
 * - tanh is NumPy's own float loop for np.tanh (its SIMD code is not libm's), called with
 *   the arguments np.tanh passes for a contiguous array;
 * - softmax's exp, cross-entropy's log, softmax's row sums, the ReLUs' max and softplus
 *   are NumPy's own loops for np.exp, np.log, np.add (the row sums: np.add.reduce's call
 *   on a row, so NumPy's pairwise order), np.maximum and np.logaddexp, called as NumPy
 *   calls them (a scalar operand broadcast with step 0), each checked against NumPy at
 *   load (numpy_routines.py);
 * - the rest of the elementwise work is fused_layers.c's kernels or exact operations
 *   (−, ÷, max), and each loss's sum the BLAS dot np.vdot calls.
 * Every width and the row count are > 1: NumPy takes other BLAS routes for vectors, so
 * fused_backprop.py binds nothing then.
 *
 * A stack of pieces (--deterministic's virtual shards, which network.py runs through
 * np.matmul) is run piece by piece, each its own block: np.matmul makes the same BLAS
 * call per matrix of a stack (numpy/_core/src/umath/matmul.c.src). A short piece's rows
 * past its real ones get a(L) = 0, as network.py's padding does.
 * tests/test_fused_backprop.py compares every way bit for bit.
 */
#include <stdint.h>
#include <string.h>

#include "fused_layers.h"

#define MAX_LAYERS 16
enum { ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112 }; /* CBLAS's enum values */
enum { IDENTITY, SIGMOID, TANH, SOFTMAX, RELU, LEAKY_RELU, SOFTPLUS }; /* σ(ℓ): the .py's KINDS */
enum { SQUARED = 0, CROSS_ENTROPY = 1 };                  /* the loss: its LOSSES */

typedef int64_t blas_int; /* scipy-openblas's ILP64 interface (its "64_" symbols) */
typedef void (*ufunc_loop)(char **args, const ptrdiff_t *dims, const ptrdiff_t *steps, void *data);
typedef struct {
    void *function, *data; /* a NumPy ufunc's inner loop for one dtype */
} numpy_loop;

typedef struct {
    ptrdiff_t layers, rows;          /* L and n (rows per piece) */
    ptrdiff_t width[MAX_LAYERS + 1]; /* n_0 .. n_L */
    int kind[MAX_LAYERS + 1];        /* σ(ℓ) for ℓ = 1..L */
    const void *x, *y, *ones;        /* X (n × n_0), Y (n × n_L), n ones: piece 0's */
    const void *W[MAX_LAYERS + 1], *b[MAX_LAYERS + 1];
    void *Z[MAX_LAYERS + 1], *A[MAX_LAYERS + 1], *D[MAX_LAYERS + 1];
    void *grad_W[MAX_LAYERS + 1], *grad_b[MAX_LAYERS + 1];
    void *gemm, *gemv, *dot;         /* cblas_?gemm, cblas_?gemv, cblas_?dot */
    /* NumPy's loops for this dtype (those the network's σ and loss do not use may be NULL) */
    numpy_loop tanh, exp, log, add, maximum, logaddexp;
    double slope[MAX_LAYERS + 1];    /* the leaky ReLU's α, per layer */
    int loss_kind;                   /* SQUARED or CROSS_ENTROPY (softmax output) */
    /* A stack of pieces (--deterministic's virtual shards), each run as its own block:
     * elements from one piece to the next in X, Y, the gradient, and layer ℓ's Z, A, D;
     * each piece's real rows (its rows past them are padding: a(L) = 0 there). */
    ptrdiff_t pieces, x_step, y_step, grad_step, step[MAX_LAYERS + 1];
    const int64_t *real_rows;        /* pieces entries, or NULL: every row is real */
    void *sums;                      /* out, for a stack: each piece's Σ_k C_k */
    double scale;                    /* in: the trainer's 1/B */
    double loss;                     /* out: Σ_k C_k (of the last piece) */
} backprop_call;

/* One block of rows × cols for a fused_layers.c kernel. */
static layer_call block(ptrdiff_t rows, ptrdiff_t cols, void *a0, void *a1, const void *bias)
{
    layer_call c = {.blocks = 1, .rows = rows, .cols = cols, .bias = bias};
    c.array[0] = a0;
    c.array[1] = a1;
    return c;
}

/* out ← f(in) for a unary ufunc, as np.f(in, out=out) runs it on contiguous arrays: one
 * loop call over every element. */
static void numpy_unary(const numpy_loop *f, void *in, void *out, ptrdiff_t count, ptrdiff_t size)
{
    char *args[2] = {in, out};
    ptrdiff_t steps[2] = {size, size};
    ((ufunc_loop)f->function)(args, &count, steps, f->data);
}

/* out ← f(in, second), as np.f(in, second, out=out) runs it on contiguous arrays: one loop
 * call, `second` a scalar (step 0, NumPy's broadcast 0-d operand) or an array. */
static void numpy_binary(const numpy_loop *f, void *in, void *second, int scalar, void *out,
                         ptrdiff_t count, ptrdiff_t size)
{
    char *args[3] = {in, second, out};
    ptrdiff_t steps[3] = {size, scalar ? 0 : size, size};
    ((ufunc_loop)f->function)(args, &count, steps, f->data);
}

/* *sum ← *sum + Σ row, as np.add.reduce runs its loop on one contiguous row of `count`
 * after setting the output to add's identity (the caller's *sum = 0): NumPy's own
 * pairwise summation, in its order. */
static void numpy_row_sum(const numpy_loop *add, void *sum, const void *row, ptrdiff_t count,
                          ptrdiff_t size)
{
    char *args[3] = {sum, (char *)row, sum};
    ptrdiff_t steps[3] = {0, size, 0};
    ((ufunc_loop)add->function)(args, &count, steps, add->data);
}

#define DEFINE_BACKPROP(T, SUFFIX)                                                            \
    typedef void (*gemm_##SUFFIX)(int, int, int, blas_int, blas_int, blas_int, T, const T *, \
                                  blas_int, const T *, blas_int, T, T *, blas_int);          \
    typedef void (*gemv_##SUFFIX)(int, int, blas_int, blas_int, T, const T *, blas_int,      \
                                  const T *, blas_int, T, T *, blas_int);                    \
    typedef T (*dot_##SUFFIX)(blas_int, const T *, blas_int, const T *, blas_int);           \
                                                                                              \
    /* a = softmax(z) by rows, as bound_layers.py's NumPy calls: a = z − max (np.maximum's \
     * NaN-propagating max, exact), np.exp over the block, each row's np.add.reduce, a/Σ */ \
    static void softmax_##SUFFIX(const backprop_call *c, ptrdiff_t ell)                      \
    {                                                                                         \
        const ptrdiff_t n = c->rows, m = c->width[ell];                                       \
        const T *z = c->Z[ell];                                                               \
        T *a = c->A[ell];                                                                     \
        for (ptrdiff_t r = 0; r < n; r++) {                                                   \
            const T *zr = z + r * m;                                                          \
            T top = zr[0];                                                                    \
            for (ptrdiff_t j = 1; j < m; j++)                                                 \
                top = (top >= zr[j] || top != top) ? top : zr[j];                             \
            for (ptrdiff_t j = 0; j < m; j++)                                                 \
                a[r * m + j] = zr[j] - top;                                                   \
        }                                                                                     \
        numpy_unary(&c->exp, a, a, n * m, sizeof(T));                                         \
        for (ptrdiff_t r = 0; r < n; r++) {                                                   \
            T *ar = a + r * m, sum = 0;                                                       \
            numpy_row_sum(&c->add, &sum, ar, m, sizeof(T));                                   \
            for (ptrdiff_t j = 0; j < m; j++)                                                 \
                ar[j] = ar[j] / sum;                                                          \
        }                                                                                     \
    }                                                                                         \
                                                                                              \
    /* a(ℓ) = σ(z(ℓ) + b(ℓ)), z(ℓ) holding the sum (network.py's _feed_forward) */          \
    static void activate_##SUFFIX(const backprop_call *c, ptrdiff_t ell)                     \
    {                                                                                         \
        const ptrdiff_t n = c->rows, m = c->width[ell];                                       \
        layer_call k = block(n, m, c->Z[ell], c->A[ell], c->b[ell]);                          \
        if (c->kind[ell] == SIGMOID) { /* (tanh(z/2) + 1)·0.5 */                              \
            bias_half_##SUFFIX(&k);                                                           \
            numpy_unary(&c->tanh, c->A[ell], c->A[ell], n * m, sizeof(T));                    \
            k.array[0] = c->A[ell];                                                           \
            sigmoid_tail_##SUFFIX(&k);                                                        \
        } else {                                                                              \
            bias_add_##SUFFIX(&k);                                                            \
            T zero = 0, *a = c->A[ell];                                                       \
            const T *z = c->Z[ell];                                                           \
            switch (c->kind[ell]) {                                                           \
            case TANH:                                                                        \
                numpy_unary(&c->tanh, c->Z[ell], a, n * m, sizeof(T));                        \
                break;                                                                        \
            case SOFTMAX:                                                                     \
                softmax_##SUFFIX(c, ell);                                                     \
                break;                                                                        \
            case RELU: /* np.maximum(z, 0.0) */                                               \
                numpy_binary(&c->maximum, c->Z[ell], &zero, 1, a, n * m, sizeof(T));          \
                break;                                                                        \
            case LEAKY_RELU: { /* a = z·α, then np.maximum(z, a) */                           \
                const T alpha = (T)c->slope[ell];                                             \
                for (ptrdiff_t i = 0; i < n * m; i++)                                         \
                    a[i] = z[i] * alpha;                                                      \
                numpy_binary(&c->maximum, c->Z[ell], a, 0, a, n * m, sizeof(T));              \
                break;                                                                        \
            }                                                                                 \
            case SOFTPLUS: /* np.logaddexp(z, 0.0) */                                         \
                numpy_binary(&c->logaddexp, c->Z[ell], &zero, 1, a, n * m, sizeof(T));        \
                break;                                                                        \
            default: /* the identity */                                                       \
                memcpy(a, z, (size_t)(n * m) * sizeof(T));                                    \
            }                                                                                 \
        }                                                                                     \
    }                                                                                         \
                                                                                              \
    /* Δ ⊙= σ̇(ℓ), with Δ·s first if scaled, as bound_layers.py's kernels: from a(ℓ)     \
     * (sigmoid, tanh), from z(ℓ) (the ReLUs; softplus, whose σ̇ is the sigmoid: z/2 and   \
     * NumPy's tanh in z(ℓ), dead by now, then the tail), or 1 (the identity) */            \
    static void derivative_##SUFFIX(const backprop_call *c, ptrdiff_t ell, int scaled, T s)  \
    {                                                                                         \
        const ptrdiff_t count = c->rows * c->width[ell];                                      \
        T *d = c->D[ell], *z = c->Z[ell];                                                     \
        layer_call k = block(c->rows, c->width[ell], d, c->A[ell], NULL);                     \
        k.scaled = scaled;                                                                    \
        k.scale = s;                                                                          \
        switch (c->kind[ell]) {                                                               \
        case SIGMOID:                                                                         \
            sigmoid_derivative_##SUFFIX(&k);                                                  \
            break;                                                                            \
        case TANH:                                                                            \
            tanh_derivative_##SUFFIX(&k);                                                     \
            break;                                                                            \
        case RELU:                                                                            \
            k.array[1] = z;                                                                   \
            relu_derivative_##SUFFIX(&k);                                                     \
            break;                                                                            \
        case LEAKY_RELU:                                                                      \
            k.array[1] = z;                                                                   \
            k.slope = c->slope[ell];                                                          \
            leaky_relu_derivative_##SUFFIX(&k);                                               \
            break;                                                                            \
        case SOFTPLUS:                                                                        \
            for (ptrdiff_t i = 0; i < count; i++)                                             \
                z[i] = z[i] * (T)0.5;                                                         \
            numpy_unary(&c->tanh, z, z, count, sizeof(T));                                    \
            k.array[1] = z;                                                                   \
            sigmoid_tail_product_##SUFFIX(&k);                                                \
            break;                                                                            \
        default: /* the identity: σ̇ = 1 */                                                   \
            if (scaled)                                                                       \
                for (ptrdiff_t i = 0; i < count; i++)                                         \
                    d[i] = d[i] * s;                                                          \
        }                                                                                     \
    }                                                                                         \
                                                                                              \
    /* The squared loss: Δ(L) = a(L) − y, Σ Δ², then Δ(L)·2s ⊙ σ̇(L) (losses.py) */          \
    static void squared_##SUFFIX(backprop_call *c)                                            \
    {                                                                                         \
        const ptrdiff_t L = c->layers, outputs = c->rows * c->width[L];                       \
        const T *a = c->A[L], *y = c->y;                                                      \
        T *d = c->D[L];                                                                       \
        for (ptrdiff_t i = 0; i < outputs; i++)                                               \
            d[i] = a[i] - y[i];                                                               \
        c->loss = (double)((dot_##SUFFIX)c->dot)(outputs, d, 1, d, 1);                        \
        derivative_##SUFFIX(c, L, 1, (T)(2.0 * c->scale));                                    \
    }                                                                                         \
                                                                                              \
    /* Cross-entropy after softmax: Δ(L) = (a − y)·s (a − y when s = 1), and              \
     * −Σ y ⊙ log(max(a, 10⁻³⁰)) with z(L), dead by now, as the scratch (losses.py) */        \
    static void cross_entropy_##SUFFIX(backprop_call *c)                                      \
    {                                                                                         \
        const ptrdiff_t L = c->layers, outputs = c->rows * c->width[L];                       \
        const T *a = c->A[L], *y = c->y;                                                      \
        const T s = (T)c->scale, floor = (T)1e-30;                                            \
        T *d = c->D[L], *scratch = c->Z[L];                                                   \
        for (ptrdiff_t i = 0; i < outputs; i++) {                                             \
            T t = a[i] - y[i];                                                                \
            d[i] = c->scale == 1.0 ? t : t * s;                                               \
            scratch[i] = (a[i] >= floor || a[i] != a[i]) ? a[i] : floor;                      \
        }                                                                                     \
        numpy_unary(&c->log, scratch, scratch, outputs, sizeof(T));                           \
        c->loss = -(double)((dot_##SUFFIX)c->dot)(outputs, y, 1, scratch, 1);                 \
    }                                                                                         \
                                                                                              \
    static void backprop_block_##SUFFIX(backprop_call *c, ptrdiff_t real_rows)              \
    {                                                                                         \
        const gemm_##SUFFIX gemm = (gemm_##SUFFIX)c->gemm;                                    \
        const gemv_##SUFFIX gemv = (gemv_##SUFFIX)c->gemv;                                    \
        const ptrdiff_t L = c->layers, n = c->rows, *w = c->width;                            \
                                                                                              \
        /* Feed-forward: z(ℓ) = a(ℓ-1) W(ℓ)ᵀ (W(ℓ)ᵀ is a transposed view: TRANS) */          \
        for (ptrdiff_t ell = 1; ell <= L; ell++) {                                            \
            const T *a_prev = ell == 1 ? c->x : c->A[ell - 1];                                \
            gemm(ROW_MAJOR, NO_TRANS, TRANS, n, w[ell], w[ell - 1], 1, a_prev, w[ell - 1],   \
                 c->W[ell], w[ell - 1], 0, c->Z[ell], w[ell]);                                \
            activate_##SUFFIX(c, ell);                                                        \
        }                                                                                     \
                                                                                              \
        /* A piece's padding rows: a(L) = 0, hence Δ(L) = 0 and no share of anything */    \
        T *padding = (T *)c->A[L] + real_rows * w[L];                                         \
        memset(padding, 0, (size_t)((n - real_rows) * w[L]) * sizeof(T));                     \
                                                                                              \
        if (c->loss_kind == CROSS_ENTROPY)                                                    \
            cross_entropy_##SUFFIX(c);                                                        \
        else                                                                                  \
            squared_##SUFFIX(c);                                                              \
                                                                                              \
        /* Backward: ∂C/∂W(ℓ) = Δᵀ a(ℓ-1), ∂C/∂b(ℓ) = onesᵀ Δ, Δ(ℓ-1) = (Δ W(ℓ)) ⊙ σ̇ */    \
        for (ptrdiff_t ell = L; ell >= 1; ell--) {                                            \
            const T *a_prev = ell == 1 ? c->x : c->A[ell - 1];                                \
            gemm(ROW_MAJOR, TRANS, NO_TRANS, w[ell], w[ell - 1], n, 1, c->D[ell], w[ell],    \
                 a_prev, w[ell - 1], 0, c->grad_W[ell], w[ell - 1]);                          \
            gemv(ROW_MAJOR, TRANS, n, w[ell], 1, c->D[ell], w[ell], c->ones, 1, 0,           \
                 c->grad_b[ell], 1);                                                          \
            if (ell > 1) {                                                                    \
                gemm(ROW_MAJOR, NO_TRANS, NO_TRANS, n, w[ell - 1], w[ell], 1, c->D[ell],     \
                     w[ell], c->W[ell], w[ell - 1], 0, c->D[ell - 1], w[ell - 1]);            \
                derivative_##SUFFIX(c, ell - 1, 0, 1);                                        \
            }                                                                                 \
        }                                                                                     \
    }                                                                                         \
                                                                                              \
    /* Every piece in turn, as its own block with its own products (so a piece's bits do \
     * not depend on the stack it is in), its Σ_k C_k into sums[k] for a stack */         \
    void backprop_##SUFFIX(backprop_call *c)                                                  \
    {                                                                                         \
        for (ptrdiff_t k = 0; k < c->pieces; k++) {                                          \
            backprop_call piece = *c;                                                         \
            piece.x = (const T *)c->x + k * c->x_step;                                        \
            piece.y = (const T *)c->y + k * c->y_step;                                        \
            for (ptrdiff_t ell = 1; ell <= c->layers; ell++) {                                \
                const ptrdiff_t at = k * c->step[ell], grad_at = k * c->grad_step;            \
                piece.Z[ell] = (T *)c->Z[ell] + at;                                           \
                piece.A[ell] = (T *)c->A[ell] + at;                                           \
                piece.D[ell] = (T *)c->D[ell] + at;                                           \
                piece.grad_W[ell] = (T *)c->grad_W[ell] + grad_at;                            \
                piece.grad_b[ell] = (T *)c->grad_b[ell] + grad_at;                            \
            }                                                                                 \
            backprop_block_##SUFFIX(&piece, c->real_rows ? c->real_rows[k] : c->rows);        \
            c->loss = piece.loss;                                                             \
            if (c->sums)                                                                      \
                ((T *)c->sums)[k] = (T)piece.loss;                                            \
        }                                                                                     \
    }

DEFINE_BACKPROP(float, f32)
DEFINE_BACKPROP(double, f64)
