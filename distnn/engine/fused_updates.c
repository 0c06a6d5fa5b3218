/* The built-in update rules of schedules.py, each in ONE pass over the flat buffer that
 * also does θ −= step.
 *
 * Why: in NumPy, Adam is twelve whole-array passes plus the subtraction, each a ufunc call.
 * On a small network the calls (about 0.5 µs each) are most of the update; on a large one
 * the passes re-read the arrays thirteen times. Here each element is read once and written
 * once, in registers.
 *
 * The same bits as the NumPy passes: every operation below is the same IEEE-754 operation
 * (+, −, ×, ÷, √, all correctly rounded), on the same operands, in the same order, in the
 * array's own precision. That holds only when the compiler keeps them apart: setup.py
 * builds this file with -ffp-contract=off (no fused multiply-add, which rounds once where
 * NumPy rounds twice) and never with -ffast-math; -fno-math-errno only lets sqrt become
 * the vector instruction (a negative argument cannot occur: its operand is a sum of
 * squares). tests/test_fused_updates.py compares every rule with the NumPy passes bit for
 * bit. Plain C, no Python API: distnn/engine/fused.py loads it with ctypes.
 */
#include <math.h>
#include <stddef.h>

/* One copy of each loop per vector width, chosen at load time by the CPU (gcc's function
 * multi-versioning): the same operations on wider registers, so the same bits. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define VECTOR_WIDTHS __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define VECTOR_WIDTHS
#endif

#define DEFINE_RULES(T, SUFFIX, SQRT)                                                        \
                                                                                            \
    /* step = lr·g */                                                                       \
    VECTOR_WIDTHS void sgd_##SUFFIX(ptrdiff_t n, T *restrict theta, const T *restrict g, T lr)             \
    {                                                                                       \
        for (ptrdiff_t i = 0; i < n; i++) {                                                 \
            T step = g[i] * lr;                                                             \
            theta[i] = theta[i] - step;                                                     \
        }                                                                                   \
    }                                                                                       \
                                                                                            \
    /* v ← β·v + g;  step = lr·v,  or with Nesterov  step = lr·(β·v + g) */                \
    VECTOR_WIDTHS void momentum_##SUFFIX(ptrdiff_t n, T *restrict theta, const T *restrict g,              \
                           T *restrict v, T beta, T lr, int nesterov)                       \
    {                                                                                       \
        for (ptrdiff_t i = 0; i < n; i++) {                                                 \
            T vi = v[i] * beta;                                                             \
            vi = vi + g[i];                                                                 \
            v[i] = vi;                                                                      \
            T step;                                                                         \
            if (nesterov) {                                                                 \
                step = vi * beta;                                                           \
                step = step + g[i];                                                         \
                step = step * lr;                                                           \
            } else {                                                                        \
                step = vi * lr;                                                             \
            }                                                                               \
            theta[i] = theta[i] - step;                                                     \
        }                                                                                   \
    }                                                                                       \
                                                                                            \
    /* scale·num / (√x + ε): the adaptive rules' step, in NumPy's order of operations */    \
    static inline T adaptive_step_##SUFFIX(T num, T x, T eps, T scale)                      \
    {                                                                                       \
        T step = SQRT(x);                                                                   \
        step = step + eps;                                                                  \
        step = num / step;                                                                  \
        return step * scale;                                                                \
    }                                                                                       \
                                                                                            \
    /* G ← G + g²;  step = lr·g / (√G + ε) */                                               \
    VECTOR_WIDTHS void adagrad_##SUFFIX(ptrdiff_t n, T *restrict theta, const T *restrict g,               \
                          T *restrict sum_sq, T eps, T lr)                                  \
    {                                                                                       \
        for (ptrdiff_t i = 0; i < n; i++) {                                                 \
            T sq = g[i] * g[i];                                                             \
            T G = sum_sq[i] + sq;                                                           \
            sum_sq[i] = G;                                                                  \
            theta[i] = theta[i] - adaptive_step_##SUFFIX(g[i], G, eps, lr);                 \
        }                                                                                   \
    }                                                                                       \
                                                                                            \
    /* s ← ρ·s + (1−ρ)·g²;  step = lr·g / (√s + ε) */                                       \
    VECTOR_WIDTHS void rmsprop_##SUFFIX(ptrdiff_t n, T *restrict theta, const T *restrict g,               \
                          T *restrict sq_avg, T rho, T one_minus_rho, T eps, T lr)          \
    {                                                                                       \
        for (ptrdiff_t i = 0; i < n; i++) {                                                 \
            T s = sq_avg[i] * rho;                                                          \
            T sq = g[i] * g[i];                                                             \
            sq = sq * one_minus_rho;                                                        \
            s = s + sq;                                                                     \
            sq_avg[i] = s;                                                                  \
            theta[i] = theta[i] - adaptive_step_##SUFFIX(g[i], s, eps, lr);                 \
        }                                                                                   \
    }                                                                                       \
                                                                                            \
    /* m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²;                                          \
     * step = (lr/(1−β1^k))·m / (√(v/(1−β2^k)) + ε) */                                      \
    VECTOR_WIDTHS void adam_##SUFFIX(ptrdiff_t n, T *restrict theta, const T *restrict g, T *restrict m,   \
                       T *restrict v, T b1, T one_minus_b1, T b2, T one_minus_b2, T eps,    \
                       T v_correction, T m_factor)                                          \
    {                                                                                       \
        for (ptrdiff_t i = 0; i < n; i++) {                                                 \
            T gi = g[i];                                                                    \
            T mi = m[i] * b1;                                                               \
            T t = gi * one_minus_b1;                                                        \
            mi = mi + t;                                                                    \
            m[i] = mi;                                                                      \
            T vi = v[i] * b2;                                                               \
            t = gi * gi;                                                                    \
            t = t * one_minus_b2;                                                           \
            vi = vi + t;                                                                    \
            v[i] = vi;                                                                      \
            T v_hat = vi / v_correction;                                                    \
            theta[i] = theta[i] - adaptive_step_##SUFFIX(mi, v_hat, eps, m_factor);         \
        }                                                                                   \
    }

/* Each rule as a call with ONE argument, the address of an `update_call` that
 * distnn/engine/fused.py builds once per (θ, g, state) and refreshes with each step's
 * scalars: ctypes converts every argument of a call, and twelve of them cost a small
 * network's step more than the pass itself. The scalars are doubles here, rounded to the
 * arrays' precision on the way in, as ctypes rounds a Python float for a float argument. */
typedef struct {
    ptrdiff_t n;
    void *theta, *g, *state[2];
    double scalar[7]; /* the rule's scalars, in its kernel's order */
    int flag;         /* momentum's Nesterov switch */
} update_call;

#define S(T, i) ((T)c->scalar[i])
#define DEFINE_CALLS(T, SUFFIX)                                                              \
    void sgd_call_##SUFFIX(const update_call *c)                                            \
    {                                                                                       \
        sgd_##SUFFIX(c->n, c->theta, c->g, S(T, 0));                                        \
    }                                                                                       \
    void momentum_call_##SUFFIX(const update_call *c)                                       \
    {                                                                                       \
        momentum_##SUFFIX(c->n, c->theta, c->g, c->state[0], S(T, 0), S(T, 1), c->flag);    \
    }                                                                                       \
    void adagrad_call_##SUFFIX(const update_call *c)                                        \
    {                                                                                       \
        adagrad_##SUFFIX(c->n, c->theta, c->g, c->state[0], S(T, 0), S(T, 1));              \
    }                                                                                       \
    void rmsprop_call_##SUFFIX(const update_call *c)                                        \
    {                                                                                       \
        rmsprop_##SUFFIX(c->n, c->theta, c->g, c->state[0], S(T, 0), S(T, 1), S(T, 2),      \
                         S(T, 3));                                                          \
    }                                                                                       \
    void adam_call_##SUFFIX(const update_call *c)                                           \
    {                                                                                       \
        adam_##SUFFIX(c->n, c->theta, c->g, c->state[0], c->state[1], S(T, 0), S(T, 1),     \
                      S(T, 2), S(T, 3), S(T, 4), S(T, 5), S(T, 6));                         \
    }

DEFINE_RULES(float, f32, sqrtf)
DEFINE_RULES(double, f64, sqrt)
DEFINE_CALLS(float, f32)
DEFINE_CALLS(double, f64)
