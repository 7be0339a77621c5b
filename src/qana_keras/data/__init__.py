"""Datasets (HAM10000, PAD-UFES-20, ISIC 2018 layout), validation, lesion-level splits, caching, tf.data."""
