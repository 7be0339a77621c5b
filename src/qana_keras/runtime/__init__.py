"""Running saved models: :mod:`qana_keras.runtime.load` loads any model file and gives its logits."""
