"""Layers that hold their weights, for inference and for NumPy training loops."""

import math

import numpy as np

from fastln._ops import (_SUPPORTED_NAMES, _eps, _kind, _normalized_shape, layer_norm,
                         layer_norm_backward, layer_norm_forward, rms_norm, rms_norm_backward,
                         rms_norm_forward)

__all__ = ["LayerNorm", "RMSNorm"]


def _layer_shape(normalized_shape):
    """A layer's normalized_shape as a tuple of positive ints."""
    dims = _normalized_shape(normalized_shape)
    if math.prod(dims) == 0:
        raise ValueError(f"normalized_shape must not hold a zero, got {dims}: a layer cannot "
                         "normalize over zero elements")
    return dims


def _param_dtype(dtype):
    """A layer's weight dtype: float32 when None, as in PyTorch; a dtype the kernels take."""
    dtype = np.dtype(np.float32 if dtype is None else dtype)
    if not dtype.isnative or _kind(dtype) is None:
        raise TypeError(f"dtype must be {_SUPPORTED_NAMES} (native byte order), got {dtype}")
    return dtype


class LayerNorm:
    """Layer normalization with a learnable weight and bias, like ``torch.nn.LayerNorm``.

    Calling the layer normalizes (no state is kept). For training, `forward` keeps what
    `backward` needs, and `backward` returns dx and adds the weight and bias gradients to
    `grad_weight` and `grad_bias` (accumulating, as PyTorch does, until `zero_grad`).

    Parameters
    ----------
    normalized_shape : int or tuple of int
        The trailing dims to normalize over.
    eps : float, optional
        Added to the variance.
    elementwise_affine : bool, optional
        Hold a weight (ones) and, if `bias`, a bias (zeros). When False both are None.
    bias : bool, optional
        Hold a bias; ignored when `elementwise_affine` is False.
    dtype : optional
        dtype of weight and bias: float32 (the default, also when None; it serves float16 and
        bfloat16 inputs too), float64, or float16 or bfloat16 for inputs of that dtype.

    Examples
    --------
    >>> import numpy as np, fastln
    >>> ln = fastln.LayerNorm(4)
    >>> x = np.arange(8, dtype=np.float32).reshape(2, 4)
    >>> y = ln.forward(x)
    >>> dx = ln.backward(np.ones_like(y))
    >>> ln.grad_bias
    array([2., 2., 2., 2.], dtype=float32)
    """

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True,
                 dtype=np.float32):
        self.normalized_shape = _layer_shape(normalized_shape)
        self.eps = _eps(eps)
        dtype = _param_dtype(dtype)
        self.weight = np.ones(self.normalized_shape, dtype) if elementwise_affine else None
        self.bias = (np.zeros(self.normalized_shape, dtype)
                     if elementwise_affine and bias else None)
        self.grad_weight = None
        self.grad_bias = None
        self._saved = None

    def __repr__(self):
        return (f"LayerNorm({self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.weight is not None}, bias={self.bias is not None})")

    def __call__(self, x, *, out=None):
        """Return the normalized `x` (writing it to `out` when given)."""
        return layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps, out=out)

    def forward(self, x):
        """Normalize `x` and keep x, mean and rstd for `backward` (x is kept, not copied)."""
        y, mean, rstd = layer_norm_forward(x, self.normalized_shape, self.weight, self.bias,
                                           self.eps)
        self._saved = (x, mean, rstd)
        return y

    def backward(self, dy):
        """Return dx for the gradient `dy` of the last `forward`'s output.

        The weight and bias gradients are added to `grad_weight` and `grad_bias`.
        """
        if self._saved is None:
            raise RuntimeError("LayerNorm.backward called before forward")
        x, mean, rstd = self._saved
        dx, dweight, dbias = layer_norm_backward(dy, x, mean, rstd, self.weight)
        if self.weight is not None:
            self.grad_weight = _accumulate(self.grad_weight, dweight, self.weight.dtype)
        if self.bias is not None:
            self.grad_bias = _accumulate(self.grad_bias, dbias, self.bias.dtype)
        return dx

    def zero_grad(self):
        """Forget the accumulated gradients."""
        self.grad_weight = None
        self.grad_bias = None


class RMSNorm:
    """Root-mean-square normalization with a learnable weight, like ``torch.nn.RMSNorm``.

    Used like `LayerNorm`: calling normalizes; `forward` keeps what `backward` needs; `backward`
    returns dx and adds the weight gradient to `grad_weight` until `zero_grad`.

    Parameters
    ----------
    normalized_shape : int or tuple of int
        The trailing dims to normalize over.
    eps : float or None, optional
        Added to the mean square; None means ``finfo(x.dtype).eps`` of the input.
    elementwise_affine : bool, optional
        Hold a weight (ones); when False it is None.
    dtype : optional
        dtype of the weight, as for `LayerNorm` (float32 by default, also when None).

    Examples
    --------
    >>> import numpy as np, fastln
    >>> norm = fastln.RMSNorm(2, eps=0.0)
    >>> norm(np.array([[3.0, 4.0]], dtype=np.float32))
    array([[0.84852815, 1.1313709 ]], dtype=float32)
    """

    def __init__(self, normalized_shape, eps=None, elementwise_affine=True, dtype=np.float32):
        self.normalized_shape = _layer_shape(normalized_shape)
        self.eps = None if eps is None else _eps(eps)
        dtype = _param_dtype(dtype)
        self.weight = np.ones(self.normalized_shape, dtype) if elementwise_affine else None
        self.grad_weight = None
        self._saved = None

    def __repr__(self):
        return (f"RMSNorm({self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.weight is not None})")

    def __call__(self, x, *, out=None):
        """Return the normalized `x` (writing it to `out` when given)."""
        return rms_norm(x, self.normalized_shape, self.weight, self.eps, out=out)

    def forward(self, x):
        """Normalize `x` and keep x and rstd for `backward` (x is kept, not copied)."""
        y, rstd = rms_norm_forward(x, self.normalized_shape, self.weight, self.eps)
        self._saved = (x, rstd)
        return y

    def backward(self, dy):
        """Return dx for the gradient `dy` of the last `forward`'s output; the weight gradient
        is added to `grad_weight`."""
        if self._saved is None:
            raise RuntimeError("RMSNorm.backward called before forward")
        x, rstd = self._saved
        dx, dweight = rms_norm_backward(dy, x, rstd, self.weight)
        if self.weight is not None:
            self.grad_weight = _accumulate(self.grad_weight, dweight, self.weight.dtype)
        return dx

    def zero_grad(self):
        """Forget the accumulated gradient."""
        self.grad_weight = None


def _accumulate(total, grad, dtype):
    grad = grad.astype(dtype, copy=False)
    return grad if total is None else total + grad
