"""Model variants, built from named blocks and registered by name (``registry.build_model``).

``keras`` here is ``tf_keras`` (Keras 2): quantizeml and cnn2snn reject Keras 3 models. Importing this package
registers every variant: QANA (``qana``), the baselines and the ImageNet-pretrained Lite0 cuts.
"""
import qana_keras  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import tf_keras as keras  # noqa: E402

from qana_keras.models import baselines, pretrained, qana  # noqa: E402,F401  (they register their variants)
from qana_keras.models.registry import MODEL_BUILDERS, build_model  # noqa: E402,F401

__all__ = ["keras", "build_model", "MODEL_BUILDERS"]
