"""Evaluation: any model on a dataset (evaluate.py), subgroups, predict, the crop study (crop_study.py), CPU
speed (bench.py), the int8 TFLite export for CPUs (export.py), the hardware cost of untrained designs."""
