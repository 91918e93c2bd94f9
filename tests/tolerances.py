"""The one table of numeric tolerances, per dtype, and the named comparison every test uses."""
import numpy as np
import torch

# (rtol, atol) per dtype of the computation under test. float64 paths are compared with the
# float64 NumPy oracle; reduced precisions accumulate in fp32 but round inputs and outputs.
TOLERANCES = {
    torch.float64: (1e-6, 1e-8),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (5e-2, 5e-2),
    # fp32 storage with tensor-core tf32 products (10-bit mantissa, like fp16)
    "tf32": (1e-2, 1e-2),
}
# torch.nn parity (same weights): the issue fixes these bounds, relative to the largest magnitude.
DROP_IN_RTOL = {torch.float64: 1e-6, torch.float32: 1e-5}


def _np(a):
    if isinstance(a, torch.Tensor):
        return a.detach().to("cpu", torch.float64).numpy()
    return np.asarray(a, dtype=np.float64)


def errors(actual, expected):
    """(max abs error, mean abs error, max |expected|)."""
    a, e = _np(actual), _np(expected)
    if a.shape != e.shape:
        raise AssertionError(f"shape mismatch: got {a.shape}, expected {e.shape}")
    d = np.abs(a - e)
    return float(d.max(initial=0.0)), float(d.mean()) if d.size else 0.0, float(np.abs(e).max(initial=0.0))


def assert_close(name, actual, expected, dtype=torch.float64, rtol=None, atol=None):
    """Assert |actual - expected| <= atol + rtol*|expected| elementwise; message names the tensor
    and prints the max and mean error. NaN anywhere fails."""
    r, t = TOLERANCES[dtype]
    rtol = r if rtol is None else rtol
    atol = t if atol is None else atol
    a, e = _np(actual), _np(expected)
    if a.shape != e.shape:
        raise AssertionError(f"{name}: shape {a.shape} != expected {e.shape}")
    if not np.isfinite(a).all():
        raise AssertionError(f"{name}: {int((~np.isfinite(a)).sum())} non-finite values")
    bad = np.abs(a - e) > atol + rtol * np.abs(e)
    if bad.any():
        mx, mean, ref = errors(a, e)
        raise AssertionError(
            f"{name} ({dtype}): {int(bad.sum())}/{a.size} elements out of tolerance "
            f"rtol={rtol} atol={atol}; max abs err {mx:.3e}, mean abs err {mean:.3e}, max |ref| {ref:.3e}"
        )


def assert_rel_close(name, actual, expected, rel):
    """Max error relative to the largest magnitude of `expected` (the drop-in parity bound)."""
    mx, mean, ref = errors(actual, expected)
    bound = rel * max(ref, 1.0)
    if not mx <= bound:
        raise AssertionError(f"{name}: max abs err {mx:.3e} (mean {mean:.3e}) > {rel} * max(|ref|, 1) = {bound:.3e}")
