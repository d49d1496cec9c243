# ruff: noqa
# Keras models whose losses are told the wrong thing about logits.
import tensorflow as tf
from tensorflow import keras
from tensorflow.keras import layers

model = keras.Sequential([
    layers.Dense(128, activation="relu"),
    layers.Dense(10, activation="softmax"),
])
model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))  # expect: FG303

linear = keras.Sequential([layers.Dense(64, activation="relu"), layers.Dense(10)])
linear.compile(optimizer="adam", loss="sparse_categorical_crossentropy")  # expect: FG303

binary = keras.Sequential()
binary.add(layers.Dense(16, activation="relu"))
binary.add(layers.Dense(1, activation="sigmoid"))
binary.compile(optimizer="sgd", loss=keras.losses.BinaryCrossentropy(from_logits=True))  # expect: FG303


def custom_loss(y_true, z):
    y_pred = tf.nn.softmax(z)
    return keras.losses.categorical_crossentropy(y_true, y_pred, from_logits=True)  # expect: FG303
