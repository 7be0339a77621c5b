"""QANA model variants, built from named blocks and registered by name.

``keras`` here is ``tf_keras`` (Keras 2): quantizeml and cnn2snn reject Keras 3 models.
"""
import qana_keras  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import tf_keras as keras  # noqa: E402

__all__ = ["keras"]
