/* A plan of element-wise additions (parallel/ordered_sum.py's pairwise tree) carried out
 * block by block, in one pass over memory.
 *
 * Why: --deterministic adds V shard gradients in a tree fixed by V, one NumPy call per
 * node, each a pass over gradient-sized arrays (three passes for V = 4, each reading two
 * arrays and writing one). Here every node of the plan is computed on one cache-sized
 * block of elements before the next block is touched, so each array is read or written
 * once. Every element gets the same additions, of the same operands, in the same order:
 * the same bits (IEEE addition is correctly rounded; nothing is reassociated: built
 * without -ffast-math, see setup.py). tests/test_ordered_sum_plans.py compares it with
 * the NumPy plan bit for bit.
 *
 * A plan is n_ops steps; step k is into[k] = a[k] + b[k], or into[k] = a[k] where b[k]
 * is NULL. into[k] may be a[k] (a node is computed into its left child's array).
 */
#include <stddef.h>

#define BLOCK 2048 /* elements: a block of every array of a plan fits in L1/L2 */

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define VECTOR_WIDTHS __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define VECTOR_WIDTHS
#endif

/* The three kinds of step, each with pointers the compiler may assume apart, so each
 * loop is vectorized without a run-time overlap check (which fails, and falls back to
 * scalar code, exactly when a node is summed into its left child's array). Addition is
 * commutative in IEEE arithmetic, so out = y + out is the same bits as out = out + y. */
#define DEFINE_SUM_PLAN(T, SUFFIX)                                                           \
    static inline void add_to_##SUFFIX(T *restrict out, const T *restrict y, ptrdiff_t n)     \
    {                                                                                       \
        for (ptrdiff_t i = 0; i < n; i++)                                                   \
            out[i] = out[i] + y[i];                                                         \
    }                                                                                       \
    static inline void add_##SUFFIX(T *restrict out, const T *restrict x,                   \
                                    const T *restrict y, ptrdiff_t n)                       \
    {                                                                                       \
        for (ptrdiff_t i = 0; i < n; i++)                                                   \
            out[i] = x[i] + y[i];                                                           \
    }                                                                                       \
    static inline void copy_##SUFFIX(T *restrict out, const T *restrict x, ptrdiff_t n)      \
    {                                                                                       \
        for (ptrdiff_t i = 0; i < n; i++)                                                   \
            out[i] = x[i];                                                                  \
    }                                                                                       \
                                                                                            \
    VECTOR_WIDTHS void sum_plan_##SUFFIX(ptrdiff_t n, ptrdiff_t n_ops, T *const *into,      \
                                         const T *const *a, const T *const *b)              \
    {                                                                                       \
        for (ptrdiff_t lo = 0; lo < n; lo += BLOCK) {                                       \
            ptrdiff_t len = lo + BLOCK < n ? BLOCK : n - lo;                                \
            for (ptrdiff_t k = 0; k < n_ops; k++) {                                         \
                T *out = into[k] + lo;                                                      \
                const T *x = a[k] + lo;                                                     \
                const T *y = b[k] ? b[k] + lo : NULL;                                       \
                if (y == NULL) {                                                            \
                    if (out != x)                                                           \
                        copy_##SUFFIX(out, x, len);                                         \
                } else if (out == x) {                                                      \
                    add_to_##SUFFIX(out, y, len);                                           \
                } else if (out == y) {                                                      \
                    add_to_##SUFFIX(out, x, len);                                           \
                } else {                                                                    \
                    add_##SUFFIX(out, x, y, len);                                           \
                }                                                                           \
            }                                                                               \
        }                                                                                   \
    }

DEFINE_SUM_PLAN(float, f32)
DEFINE_SUM_PLAN(double, f64)
