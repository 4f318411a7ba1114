"""Cells that compute the same function as MindSpore ops the ONNX exporter of MindSpore 2.10 cannot write."""
import math

from mindspore import nn, ops

# Abramowitz & Stegun 7.1.26: erfc(a) ~ t * P(t) * exp(-a^2), t = 1 / (1 + p a), a >= 0; |error| <= 1.5e-7.
_P = 0.3275911
_A = (1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592)  # highest degree first


class ErfFreeGELU(nn.Cell):
    """Exact (erf) GELU, 0.5 x (1 + erf(x / sqrt 2)), with erf built from Abs/Exp/Div/Where/arithmetic only:
    the exporter has no Erf, Sign or Reciprocal. |erf error| <= 1.5e-7, the size of fp32 rounding here."""

    def construct(self, x):
        z = x * (1.0 / math.sqrt(2.0))
        a = ops.abs(z)
        t = ops.div(ops.ones_like(a), 1.0 + _P * a)  # '1.0 / y' becomes Reciprocal, which it cannot write
        poly = _A[0]
        for c in _A[1:]:
            poly = poly * t + c
        erfc_a = poly * t * ops.exp(-a * a)
        # 1 + erf(z) is 2 - erfc(|z|) for z >= 0 and erfc(|z|) below (no cancellation for negative x).
        return 0.5 * x * ops.where(z >= 0, 2.0 - erfc_a, erfc_a)
