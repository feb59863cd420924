"""Time one training step of the mini preset and the input pipeline on the
bundled sample, and compare the step with the frozen encoders alone.

    python benchmarks/bench_mini_step.py --batch 16 --image-size 224
"""

import argparse
import json
import time

import keras
import numpy as np
import tensorflow as tf

from mmgrounding.config import get_preset
from mmgrounding.data.pipeline import TrainingData
from mmgrounding.model.build import build_model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--manifest", default="data/sample/sample.jsonl")
    args = parser.parse_args()

    config = get_preset("mini").replace(train={"batch_size": args.batch}, visual={"image_size": args.image_size})
    model = build_model(config)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    rng = np.random.default_rng(0)
    batch = {
        "image": tf.constant(rng.uniform(0, 255, (args.batch, args.image_size, args.image_size, 3)), tf.float32),
        "caption": tf.constant([f"a photo of thing number {i} on a table" for i in range(args.batch)]),
    }
    encoders = tf.function(lambda b: (model.backbone(b["image"]), model.text_encoder(b["caption"])))

    def median_time(function):
        function()
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            function()
            times.append(time.perf_counter() - start)
        return float(np.median(times))

    step_s = median_time(lambda: model.train_on_batch(batch))
    encoders_s = median_time(lambda: encoders(batch))

    data = TrainingData(args.manifest, min(args.batch, 8), args.image_size)
    iterator = iter(data.dataset())
    next(iterator)
    start = time.perf_counter()
    for _ in range(args.steps):
        next(iterator)
    pipeline_s = (time.perf_counter() - start) / args.steps

    print(
        json.dumps(
            {
                "batch": args.batch,
                "image_size": args.image_size,
                "train_step_s": round(step_s, 4),
                "frozen_encoders_s": round(encoders_s, 4),
                "step_over_encoders": round(step_s / encoders_s, 2),
                "pipeline_batch_s": round(pipeline_s, 4),
                "pipeline_batch_size": data.batch_size,
            }
        )
    )


if __name__ == "__main__":
    main()
