# ruff: noqa
# The TensorFlow 1 MNIST tutorial whose cross-entropy gives nan.
import tensorflow as tf

x = tf.placeholder(tf.float32, [None, 784])
W = tf.Variable(tf.zeros([784, 10]))
b = tf.Variable(tf.zeros([10]))
y = tf.nn.softmax(tf.matmul(x, W) + b)
y_ = tf.placeholder(tf.float32, [None, 10])
cross_entropy = tf.reduce_mean(-tf.reduce_sum(y_ * tf.log(y), reduction_indices=[1]))  # expect: FG102
double = tf.nn.softmax_cross_entropy_with_logits(labels=y_, logits=y)  # expect: FG303
naive_sig = 1 / (1 + tf.exp(-tf.matmul(x, W)))  # expect: FG109
