"""Lesion crops: a saliency-guided (or mask-guided) square crop of the full-resolution image, and a 2x2
tiling fallback for low-confidence images.

Deployment needs only the Akida model and the host CPU:
  1. the whole image, downscaled to the model size, goes through a saliency model (its class-activation
     map, :mod:`qana_keras.crop.saliency`; the forward-only ``head`` map runs from the Akida feature map);
  2. the map is upsampled to the full image, thresholded at ``threshold`` of its range, and the
     connected region holding its peak gives the salient box; a ``margin`` is added on each side, the
     box is squared and clamped to the image (:func:`geometry.crop_box`);
  3. that box is cut from the highest-resolution image available (the 200x150 originals here, not
     the 64x64 copy) and resized to the model size;
  4. when the classifier's confidence on the crop is below a threshold chosen on validation, it also
     classifies four overlapping tiles (2x2) of the whole image and averages the five softmaxes.

Training uses the same crops (``data.crop = saliency | mask``), cached on disk like the whole images
with a key that covers the source files, the crop parameters and the saliency model's SHA-256.
Boxes are ``(x0, y0, x1, y1)`` in pixels of the original image, half-open.

Modules: ``geometry`` (boxes, masks, cutting crops), ``saliency`` (the maps), ``cache`` (the training crops of
``data.crop``), and, in ``qana_keras.evaluation.crop_study``, the whole vs crop vs tiling evaluation and overlays.
"""
