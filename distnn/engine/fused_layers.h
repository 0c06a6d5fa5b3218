/* The layer kernels of fused_layers.c: what fused_backprop.c calls and
 * distnn/engine/fused.py's LayerCall mirrors. */
#ifndef DISTNN_FUSED_LAYERS_H
#define DISTNN_FUSED_LAYERS_H
#include <stddef.h>

typedef struct {
    ptrdiff_t blocks, rows, cols;
    ptrdiff_t stride[3];
    void *array[3];
    const void *bias; /* cols elements: b(ℓ) */
    double scale;     /* rounded to the arrays' precision, as NumPy rounds a constant */
    double slope;     /* the leaky ReLU's α, likewise */
    int scaled;       /* whether the output delta is multiplied by scale first */
} layer_call;

#define DECLARE_LAYER_KERNELS(SUFFIX)                          \
    void bias_add_##SUFFIX(const layer_call *c);               \
    void bias_half_##SUFFIX(const layer_call *c);              \
    void sigmoid_tail_##SUFFIX(const layer_call *c);           \
    void sigmoid_derivative_##SUFFIX(const layer_call *c);     \
    void tanh_derivative_##SUFFIX(const layer_call *c);        \
    void relu_derivative_##SUFFIX(const layer_call *c);        \
    void leaky_relu_derivative_##SUFFIX(const layer_call *c);  \
    void sigmoid_tail_product_##SUFFIX(const layer_call *c);   \
    void scaled_difference_##SUFFIX(const layer_call *c);

DECLARE_LAYER_KERNELS(f32)
DECLARE_LAYER_KERNELS(f64)

#endif
