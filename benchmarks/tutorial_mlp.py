# The tutorial's MNIST MLP (shared/seed, after section 5) with these changes, all marked: the
# data come from the .npz file named on the command line (MNIST-shaped synthetic images; MNIST
# cannot be downloaded here), the seed and epochs are set, and each epoch is timed. No plot.
# TUTORIAL_INTRA_OP_THREADS, when set, pins TensorFlow's threads inside one op (the bench's
# check that annlab computes what this code computes, rounded in the same order).
import json  # changed: timing and results as JSON
import os  # changed
import sys  # changed
import time  # changed

import tensorflow as tf
from tensorflow import keras
import numpy as np

data_path, epochs, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])  # changed
if os.environ.get("TUTORIAL_INTRA_OP_THREADS"):  # changed: pinned for the bench's same-math check
    tf.config.threading.set_intra_op_parallelism_threads(int(os.environ["TUTORIAL_INTRA_OP_THREADS"]))
keras.utils.set_random_seed(seed)  # changed: the same seed as annlab's run

# Load the MNIST dataset (handwritten digits)
with np.load(data_path) as f:  # changed: was keras.datasets.mnist.load_data()
    (X_train, y_train), (X_test, y_test) = (f["x_train"], f["y_train"]), (f["x_test"], f["y_test"])

# Normalize the dataset (scale pixel values between 0 and 1)
X_train = X_train / 255.0
X_test = X_test / 255.0

# Flatten the images (28x28 -> 784 pixels)
X_train = X_train.reshape(-1, 28*28)
X_test = X_test.reshape(-1, 28*28)

# Define the ANN model
model = keras.Sequential([
    keras.layers.Dense(128, activation='relu', input_shape=(784,)),  # Hidden layer 1
    keras.layers.Dense(64, activation='relu'),  # Hidden layer 2
    keras.layers.Dense(10, activation='softmax')  # Output layer (10 classes)
])

# Compile the model
model.compile(optimizer='adam',
              loss='sparse_categorical_crossentropy',
              metrics=['accuracy'])


class EpochTimer(keras.callbacks.Callback):  # changed: seconds per epoch
    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds.append(time.perf_counter() - self.started)


seconds = []
# Train the model
history = model.fit(
    X_train, y_train, epochs=epochs, validation_data=(X_test, y_test), verbose=0, callbacks=[EpochTimer()]
)  # changed: verbose=0 and the timer

# Evaluate the model
test_loss, test_acc = model.evaluate(X_test, y_test, verbose=0)
print(json.dumps({"seconds_per_epoch": seconds, "test_accuracy": float(test_acc)}))  # changed
