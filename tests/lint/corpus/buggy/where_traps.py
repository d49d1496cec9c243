# ruff: noqa
# where() that masks the output of log/sqrt/division instead of its input.
import jax
import jax.numpy as jnp
import torch


def log_loss(x):
    return torch.where(x > 0, torch.log(x), torch.zeros_like(x)).sum()  # expect: FG203


def radial(r):
    return jnp.where(r > 0, jnp.sqrt(r), 0.0)  # expect: FG203


def sinc(x):
    return torch.where(x == 0, torch.ones_like(x), torch.sin(x) / x)  # expect: FG203


grad_radial = jax.grad(lambda r: radial(r).sum())
