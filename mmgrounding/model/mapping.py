"""Per-level mapping of backbone feature maps into the common space."""

from __future__ import annotations

import keras
import tensorflow as tf


class VisualMapping(keras.layers.Layer):
    """Resize the level maps to one grid, map each into the common space.

    Each level gets its own stack of 1x1 convolutions with bias, each followed
    by LeakyReLU, and every location vector is L2-normalised at the end.

    Args:
      level_names: endpoint names in level order.
      grid_level: the endpoint whose height x width is the common grid.
      widths: output widths of the convolutions; the last is the common dim.
      alpha: LeakyReLU slope (0.25 in the authors' TF1 release).
      weight_decay: L2 penalty on the kernels in the TF1 convention
        weight_decay * sum(w^2) / 2.
    """

    def __init__(self, level_names, grid_level, widths, alpha=0.25, weight_decay=5e-4, **kwargs):
        super().__init__(**kwargs)
        if grid_level not in level_names:
            raise ValueError(f"grid_level {grid_level!r} is not one of the levels {list(level_names)}")
        self.level_names = tuple(level_names)
        self.grid_level = grid_level
        regularizer = keras.regularizers.L2(weight_decay / 2) if weight_decay else None
        self.stacks = []
        for name in self.level_names:
            stack = []
            for index, width in enumerate(widths):
                stack.append(
                    keras.layers.Conv2D(
                        width, 1, kernel_regularizer=regularizer, name=f"{name}_conv{index + 1}"
                    )
                )
                stack.append(keras.layers.LeakyReLU(negative_slope=alpha))
            self.stacks.append(stack)

    def call(self, levels):
        """Map a dict of level maps [batch, h_l, w_l, c_l] to the common space.

        Returns:
          visual: [batch, height, width, levels, dim], unit norm over dim.
        """
        grid = tf.shape(levels[self.grid_level])[1:3]
        mapped = []
        for name, stack in zip(self.level_names, self.stacks):
            features = tf.image.resize(levels[name], grid, method="bilinear")
            for layer in stack:
                features = layer(features)
            mapped.append(features)
        visual = tf.stack(mapped, axis=3)  # [batch, height, width, levels, dim]
        return tf.math.l2_normalize(visual, axis=-1)
