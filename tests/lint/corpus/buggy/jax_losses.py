# ruff: noqa
# JAX / Flax training code.
import jax
import jax.numpy as jnp


def predict(params, x):
    return x @ params["w"] + params["b"]


def loss(params, x, y):
    logits = predict(params, x)
    probs = jax.nn.softmax(logits)
    return -jnp.mean(jnp.sum(y * jnp.log(probs), axis=-1))  # expect: FG102


def log_partition(x):
    return jnp.log(jnp.sum(jnp.exp(x), axis=-1))  # expect: FG101


def sigmoid(x):
    return 1 / (1 + jnp.exp(-x))  # expect: FG109


def bce(params, x, y):
    p = jax.nn.sigmoid(predict(params, x))
    return -jnp.mean(y * jnp.log(p) + (1 - y) * jnp.log(1 - p))  # expect: FG117, FG112


def pair_lse(a, b):
    return jnp.log(jnp.exp(a) + jnp.exp(b))  # expect: FG101
