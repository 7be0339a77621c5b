"""Figures: per-class bars with recall intervals, training curves with validation loss and the selected epoch."""
import matplotlib.pyplot as plt
import pytest

from qana_keras.plots import history_figure, per_class_figure, plot_history, selected_epoch_of

CLASSES = ("a", "b")


def _metrics(with_intervals: bool) -> dict:
    per = {c: {"precision": 0.5, "recall": r, "f1": 0.5, "support": 10} for c, r in zip(CLASSES, (0.6, 0.3))}
    if with_intervals:
        per["a"]["recall_95"] = {"low": 0.4, "high": 0.8}
        per["b"]["recall_95"] = {"low": 0.1, "high": 0.5}
    return {"classes": list(CLASSES), "per_class": per}


def test_per_class_bars_have_an_axis_label_and_recall_intervals():
    fig = per_class_figure(_metrics(True))
    ax = fig.axes[0]
    assert ax.get_ylabel()
    bars = [c for c in ax.containers if getattr(c, "errorbar", None) is not None]
    assert len(bars) == 1 and bars[0].get_label() == "recall (95 % interval)"
    segments = bars[0].errorbar.lines[2][0].get_segments()  # one vertical line per class: (x, low) -> (x, high)
    assert [(s[0][1], s[1][1]) for s in segments] == [pytest.approx((0.4, 0.8)), pytest.approx((0.1, 0.5))]
    plt.close(fig)


def test_per_class_bars_without_intervals_still_draw():
    fig = per_class_figure(_metrics(False))
    assert not [c for c in fig.axes[0].containers if getattr(c, "errorbar", None) is not None]
    plt.close(fig)


HISTORY = [{"epoch": 1, "loss": 1.0, "val_loss": 1.2, "val_top1": 0.5, "val_macro_f1": 0.30},
           {"epoch": 2, "loss": 0.8, "val_loss": 1.1, "val_top1": 0.6, "val_macro_f1": 0.40},
           {"epoch": 3, "loss": 0.6, "val_loss": 1.3, "val_top1": 0.6, "val_macro_f1": 0.40}]


def test_training_curves_show_val_loss_and_mark_the_selected_epoch():
    assert selected_epoch_of(HISTORY) == 2  # the first best validation macro-F1, as training selects
    fig = history_figure(HISTORY)
    loss_labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert loss_labels == ["train loss", "val loss", "selected epoch 2"]
    assert "selected epoch 2" in [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    plt.close(fig)


def test_old_histories_without_val_loss_still_plot(tmp_path):
    old = [{k: v for k, v in row.items() if k != "val_loss"} for row in HISTORY]
    plot_history(old, tmp_path / "curves.png", selected_epoch=3)
    assert (tmp_path / "curves.png").stat().st_size > 0


def _hardware_row(model: str, macs: int, balanced: float, one_pass_on: str, hybrid: str | None = None,
                  ip: str = "v2") -> dict:
    devices = {d: {"status": "one-pass" if d == one_pass_on else "does-not-map"}
               for d in ("akd1500", "four-nodes-v2", "six-nodes-v2", "twelve-nodes-v2")}
    return {"model": model, "ip": ip, "macs": macs, "hybrid_cut_after": hybrid, "devices": devices,
            "accuracy": {"top1": 0.8, "balanced_accuracy": balanced}}


def test_accuracy_vs_cost_marks_small_devices_and_leaves_out_hybrids():
    from qana_keras.plots import accuracy_vs_cost_figure

    fig = accuracy_vs_cost_figure([_hardware_row("models/small/small.fbz", 10_000_000, 0.6, "six-nodes-v2"),
                                   _hardware_row("models/big/big.fbz", 100_000_000, 0.7, "twelve-nodes-v2"),
                                   _hardware_row("models/hyb/hyb.fbz", 1_000_000, 0.9, "six-nodes-v2", "stem")])
    ax = fig.axes[0]
    points = [c for c in ax.collections if len(c.get_offsets())]
    assert [tuple(c.get_offsets()[0]) for c in points] == [(10.0, 60.0), (100.0, 70.0)]  # MACs in millions, %
    filled = [len(c.get_facecolors()) > 0 for c in points]  # a hollow marker has no face colour
    assert filled == [True, False]
    assert [t.get_text() for t in ax.texts] == ["small", "big"]
    plt.close(fig)


def test_models_at_the_same_point_share_one_marker_and_label():
    from qana_keras.plots import accuracy_vs_cost_figure

    fig = accuracy_vs_cost_figure([_hardware_row("models/qana/qana.fbz", 100_000_000, 0.64, "twelve-nodes-v2"),
                                   _hardware_row("models/qana/qana_learn.fbz", 100_000_000, 0.64, "twelve-nodes-v2"),
                                   _hardware_row("models/other/other.fbz", 100_000_000, 0.66, "twelve-nodes-v2")])
    ax = fig.axes[0]
    assert len([c for c in ax.collections if len(c.get_offsets())]) == 2
    assert [t.get_text() for t in ax.texts] == ["qana/qana (+1 more)", "other"]
    plt.close(fig)


def test_akida_1_models_are_filled_squares_when_they_fit_akd1500():
    from matplotlib.markers import MarkerStyle

    from qana_keras.plots import accuracy_vs_cost_figure

    fig = accuracy_vs_cost_figure([_hardware_row("models/v1/v1.fbz", 40_000_000, 0.66, "akd1500", ip="v1"),
                                   _hardware_row("models/v2/v2.fbz", 40_000_000, 0.62, "six-nodes-v2")])
    points = [c for c in fig.axes[0].collections if len(c.get_offsets())]
    square, circle = (MarkerStyle(m).get_path().vertices.shape for m in ("s", "o"))
    assert [c.get_paths()[0].vertices.shape for c in points] == [square, circle]
    assert all(len(c.get_facecolors()) > 0 for c in points)  # both one pass on a small device
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "Akida 1.0 (4 bit)" in legend and "Akida 2.0 (8 bit)" in legend
    plt.close(fig)


def test_models_at_one_point_but_of_other_ip_or_device_class_keep_their_own_markers():
    from qana_keras.plots import accuracy_vs_cost_figure

    fig = accuracy_vs_cost_figure([_hardware_row("models/a/a.fbz", 40_000_000, 0.66, "twelve-nodes-v2"),
                                   _hardware_row("models/b/b.fbz", 40_000_000, 0.66, "akd1500", ip="v1"),
                                   _hardware_row("models/c/c.fbz", 40_000_000, 0.66, "six-nodes-v2")])
    ax = fig.axes[0]
    points = [c for c in ax.collections if len(c.get_offsets())]
    assert len(points) == 3 and [t.get_text() for t in ax.texts] == ["a", "b", "c"]
    assert [len(c.get_facecolors()) > 0 for c in points] == [False, True, True]
    plt.close(fig)
