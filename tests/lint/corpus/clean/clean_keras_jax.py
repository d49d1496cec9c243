# ruff: noqa
# Keras and JAX code that tells the loss the truth about logits.
import jax
import jax.numpy as jnp
import tensorflow as tf
from tensorflow import keras
from tensorflow.keras import layers

model = keras.Sequential([layers.Dense(128, activation="relu"), layers.Dense(10)])
model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))

probs_model = keras.Sequential([layers.Dense(10, activation="softmax")])
probs_model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")


def tf_loss(labels, logits):
    return tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits)


def loss(params, x, y):
    logits = x @ params["w"]
    return -jnp.mean(jnp.sum(y * jax.nn.log_softmax(logits), axis=-1))


def bce(logits, y):
    return -jnp.mean(y * jax.nn.log_sigmoid(logits) + (1 - y) * jax.nn.log_sigmoid(-logits))


def safe_norm(x):
    sq = jnp.sum(x**2, axis=-1)
    return jnp.sqrt(jnp.where(sq > 0, sq, 1.0))


def radial(r):
    safe = jnp.where(r > 0, r, 1.0)
    return jnp.where(r > 0, jnp.sqrt(safe), 0.0)
