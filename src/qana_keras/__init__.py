"""qana-keras: QANA skin-lesion classifier, trained in tf_keras, quantized with quantizeml and run on Akida.

Importing the package sets ``TF_USE_LEGACY_KERAS=1`` before anything imports TensorFlow, because
quantizeml and cnn2snn accept only Keras 2 (``tf_keras``) models.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# TensorFlow's C++ INFO lines drown the progress output; warnings and errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

__version__ = "0.1.0"

CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
"""The seven HAM10000 diagnoses, in the order of the model's outputs (alphabetical, as in the paper)."""
