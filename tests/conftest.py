"""Session-wide fixtures: the tiny Akida 2.0 model that many modules test against is quantized and converted once.

quantizeml rebuilds the Keras graph layer by layer, so each quantize + convert of even a tiny model costs
30-80 s on 2 cores; sharing one saves several minutes of the default run.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from fixtures import QUIET, random_images, tiny_model


@dataclass(frozen=True)
class TinyQana:
    """An untrained tiny ``qana`` (16x16, weights seeded), its 8-bit quantized model and its Akida model on disk.

    The Keras models are shared: tests must not change them. ``akida()`` returns a fresh copy each call.
    """

    model: object
    qmodel: object
    cut: str | None
    fbz: Path

    def akida(self):
        import akida

        return akida.Model(str(self.fbz))


@pytest.fixture(scope="session")
def tiny_qana(tmp_path_factory) -> TinyQana:
    import tf_keras

    from qana_keras.conversion.quantize import quantize_for_akida, to_akida

    tf_keras.utils.set_random_seed(0)  # the same weights every run, so numeric tolerances hold every run
    model = tiny_model("qana")
    qmodel, cut = quantize_for_akida(model, random_images(64), "qana", batch_size=16, **QUIET)
    fbz = tmp_path_factory.mktemp("tiny_qana") / "qana.fbz"
    to_akida(qmodel, strict=True, variant="qana", **QUIET).save(str(fbz))
    return TinyQana(model, qmodel, cut, fbz)


# These modules share one trained and converted tiny run (test_convert.converted_tiny_run): keep them on one worker.
TINY_RUN_MODULES = {"test_convert", "test_deploy", "test_evaluate"}


def pytest_configure(config):
    if config.getoption("dist", "no") == "loadgroup" and pytest.version_tuple[:2] >= (9, 2):
        raise pytest.UsageError(f"pytest {pytest.__version__}: pytest-xdist 3.8 cannot group tests under it "
                                "(--dist loadgroup); install the pinned pytest (make venv)")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which turns the marks into the groups it schedules by
def pytest_collection_modifyitems(items):
    """Under ``pytest -n 2 --dist loadgroup`` (pytest-xdist) each module runs on one worker, so its module fixtures
    are built once; without xdist nothing is marked."""
    if not items or not items[0].config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        module = item.module.__name__
        item.add_marker(pytest.mark.xdist_group("tiny_run" if module in TINY_RUN_MODULES else module))
