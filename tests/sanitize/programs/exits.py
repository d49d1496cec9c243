"""Exit the way argv[1] says: 'ok', 'code' (sys.exit(3)), 'raise' (ValueError), 'near' (near overflow only)."""

import sys

import torch

what = sys.argv[1]
print("args", sys.argv[1:], __name__)
if what == "code":
    sys.exit(3)
if what == "raise":
    raise ValueError("the script's own error")
if what == "near":
    torch.full((2,), 200.0, dtype=torch.float16) * 200
if what == "bad":
    torch.exp(torch.tensor([float(sys.argv[2])]))
