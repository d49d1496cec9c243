"""What to change: a hint for each (kind, op), naming floatguard's stable alternative."""

from __future__ import annotations

__all__ = ["hint_for"]

_LOW = ("float16", "bfloat16")
_EXP_LIMIT = {"float16": "11.09", "bfloat16": "88.72", "float32": "88.72", "float64": "709.78"}

_EXP = {"exp", "exp2", "expm1", "sinh", "cosh", "pow", "_softmax", "softmax", "_safe_softmax"}
_LOG = {"log", "log2", "log10", "log1p", "xlogy", "special_xlogy"}
_DIV = {"div", "div_", "reciprocal", "reciprocal_", "rsqrt", "true_divide", "floor_divide", "fmod", "remainder"}
_PROD = {"prod", "cumprod", "mul", "mul_", "_prod"}
_NORM = {"native_layer_norm", "native_batch_norm", "_native_batch_norm_legit", "_native_batch_norm_legit_functional",
         "_native_batch_norm_legit_no_training", "native_group_norm", "var", "std", "var_mean", "std_mean",
         "_batch_norm_with_update", "rms_norm", "_fused_rms_norm"}
_MATMUL = {"mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "convolution", "_convolution", "addmv", "mv", "dot",
           "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_attention_math"}


def _base(op: str | None) -> str:
    if not op:
        return ""
    return op.split("::")[-1].split(".")[0]


def hint_for(kind: str, op: str | None, dtype: str | None = None, *, phase: str | None = None,
             forward_op: str | None = None, feeds: str | None = None) -> str:
    """The hint of a finding; ``feeds`` names the op that consumed an underflowed value."""
    name, fwd, consumer = _base(op), _base(forward_op), _base(feeds)
    low = dtype in _LOW
    if dtype and dtype.startswith("float8") and kind in ("overflow", "near_overflow", "underflow"):
        return (f"scale before casting to {dtype}: multiply by fp8_max / amax (per tensor or per row, "
                "amax tracked over recent steps) and keep the inverse scale for the matmul "
                "(torch._scaled_mm takes scale_a/scale_b); float8_e4m3fn clamps at ±448 without an inf, "
                "float8_e5m2 (max 57344) suits gradients.")
    if kind == "near_overflow":
        return (f"{dtype} values this large overflow at the next multiply: compute this region in "
                "float32 (torch.autocast(..., dtype=torch.bfloat16) keeps float32's range), or scale "
                "down / normalise the activations; with float16 training use torch.amp.GradScaler.")
    if kind == "underflow":
        if consumer in _LOG or (name in ("_softmax", "softmax", "_safe_softmax") and consumer):
            return ("an underflowed probability is then passed to a log: stay in log space — "
                    "floatguard.log_softmax(x) instead of log(softmax(x)), floatguard.logsumexp(x) instead "
                    "of log(sum(exp(x))), floatguard.log_sigmoid instead of log(sigmoid(x)).")
        if name in ("prod", "cumprod", "mul", "mul_") and not low:
            return ("a product of many small factors underflows: add logarithms instead — "
                    "floatguard.log_prod(p) = sum(log(p)), and floatguard.logsumexp to add such products.")
        if low or name in ("_to_copy", "copy_", "copy"):
            return (f"{dtype} flushes tiny values to 0 (float16: below 6e-8): train in bfloat16, "
                    "or scale the loss with torch.amp.GradScaler so small gradients survive.")
        if name in _EXP:
            return ("exp of a very negative number is 0: keep the value in log space "
                    "(floatguard.logsumexp, floatguard.log_softmax, floatguard.logcumsumexp).")
        return "values below the smallest subnormal become 0: rescale, or compute in log space (floatguard.log_prod)."
    if kind == "div_by_zero":
        if phase == "backward" and fwd in ("sqrt", "norm", "linalg_vector_norm", "_euclidean_dist", "cdist", "pow"):
            return ("the gradient of sqrt (and of a norm) is infinite at 0: use floatguard.safe_sqrt(x), whose "
                    "gradient at 0 is finite, or sqrt(x + eps).")
        if name in _LOG or fwd in _LOG:
            return ("log(0) = -inf: take the log in log space (floatguard.log_softmax instead of log(softmax), "
                    "floatguard.log_sigmoid instead of log(sigmoid), floatguard.xlogy(p, p) for p*log(p) in an "
                    "entropy), or floatguard.safe_log(x), which adds the dtype's eps.")
        return ("a divisor is exactly 0: add an epsilon or use floatguard.safe_div(a, b) "
                "(eps = floatguard.default_eps(dtype)).")
    if kind == "nan":
        if name in ("sqrt", "rsqrt") and phase != "backward":
            return "sqrt of a negative number: clamp the input (x.clamp_min(0)) or use floatguard.safe_sqrt(x)."
        if phase == "backward" and fwd in ("sqrt", "norm", "linalg_vector_norm", "pow", "cdist"):
            return ("0 * inf in the gradient of sqrt (or of a norm) at 0: use floatguard.safe_sqrt(x), or add "
                    "an eps inside the sqrt.")
        if name in _NORM or fwd in _NORM:
            return ("a zero-variance normalisation: divide by sqrt(var + eps), not sqrt(var) — "
                    "nn.LayerNorm/BatchNorm take eps; check for constant inputs.")
        if name in _LOG or fwd in _LOG:
            return ("log of a negative number (or 0 * log 0): clamp the argument, or use floatguard.xlogy / "
                    "floatguard.safe_log.")
        if name in ("_softmax", "softmax", "_safe_softmax", "_log_softmax") or fwd in ("_softmax", "_log_softmax"):
            return ("a fully masked row (all -inf) has no softmax: use floatguard.softmax(x, where=mask) / "
                    "floatguard.log_softmax(x, where=mask), which give 0 / -inf for fully masked rows.")
        if name in _DIV:
            return "0/0: use floatguard.safe_div(a, b), or mask the zero divisors before dividing."
        if name in _MATMUL:
            return ("the products inside this matmul overflowed and +inf and -inf terms summed to NaN: the "
                    "activations or weights grew too large — lower the learning rate, clip gradients, normalise the "
                    "layer's input, or compute it in float32.")
        if name in ("add", "add_", "sub", "sub_", "rsub", "sum", "mean", "mul", "mul_"):
            return ("inf - inf or 0 * inf: an earlier value overflowed — find the overflow (floatguard.logsumexp / "
                    "floatguard.softmax keep exponentials finite) or run this region in float32.")
        return "NaN from NaN-free inputs: check the op's domain (negative sqrt/log, 0/0, inf - inf, 0 * inf)."
    if kind == "overflow":
        if name in ("exp", "exp_", "exp2", "exp2_", "expm1", "expm1_") and phase != "backward":
            limit = _EXP_LIMIT.get(dtype or "", "")
            past = f" ({dtype}: exp(x) is inf for x > {limit})" if limit else ""
            return (f"exp of a large number overflows{past}: subtract the max first — "
                    "exp(x - x.amax(-1, keepdim=True)) is at most 1, and -inf mask entries still give 0 — or let a "
                    "stable op do it: floatguard.softmax(x, where=mask) or torch.softmax(x, -1) instead of "
                    "exp(x) / exp(x).sum(-1), floatguard.logsumexp / floatguard.log_softmax when a log follows.")
        if low:
            return (f"{dtype} overflows past {65504 if dtype == 'float16' else '3.4e38'}: run this region in "
                    "bfloat16 or float32 autocast (torch.autocast(device, dtype=torch.bfloat16)), use "
                    "torch.amp.GradScaler for float16 training, and masks of torch.finfo(dtype).min or "
                    "floatguard.softmax(x, where=mask) instead of -1e9.")
        if name in _EXP or fwd in _EXP:
            return ("exp of a large number overflows: subtract the max first — floatguard.logsumexp, "
                    "floatguard.softmax, floatguard.log_softmax, floatguard.softplus do it for you.")
        if name in _MATMUL:
            return ("activations grew past the dtype's range: lower the learning rate, clip gradients "
                    "(torch.nn.utils.clip_grad_norm_), or normalise the layer's input.")
        return "a finite computation exceeded the dtype's range: rescale the inputs or compute in log space."
    return ""
