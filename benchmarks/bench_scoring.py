"""Time `pairwise_scores` against a direct implementation that builds the
attended vectors, a [captions, images, tokens, levels, dim] tensor, in the
same process, and report the ratio.

    python benchmarks/bench_scoring.py --batch 32 --tokens 16 --grid 18 --dim 1024
"""

import argparse
import json
import time

import numpy as np
import tensorflow as tf

from mmgrounding.model.scoring import pairwise_scores


@tf.function
def direct_word_scores(words, word_mask, visual, gamma_word=5.0):
    """Compute word scores with the attended vectors written out: a = sum_n h v, R = cos(a, e)."""
    shape = tf.shape(visual)
    flat = tf.reshape(visual, [shape[0], shape[1] * shape[2], shape[3], shape[4]])
    heatmap = tf.nn.relu(tf.einsum("btd,cnld->btcnl", words, flat))
    attended = tf.einsum("btcnl,cnld->btcld", heatmap, flat)  # [b, c, t, l, d] reordered
    norm = tf.norm(attended, axis=-1)
    relevance = tf.einsum("btcld,btd->btcl", attended, words) / tf.maximum(norm, 1e-6)
    relevance = tf.reduce_max(relevance, axis=-1)
    logits = gamma_word * relevance + (1.0 - word_mask)[:, :, None] * -1e9
    return tf.reduce_logsumexp(logits, axis=1) / gamma_word


def timed(function, repeats):
    function()  # trace and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=12)
    parser.add_argument("--grid", type=int, default=14)
    parser.add_argument("--levels", type=int, default=4)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    unit = lambda a: (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)
    words = tf.constant(unit(rng.normal(size=(args.batch, args.tokens, args.dim))))
    sentence = tf.constant(unit(rng.normal(size=(args.batch, args.dim))))
    visual = tf.constant(unit(rng.normal(size=(args.batch, args.grid, args.grid, args.levels, args.dim))))
    mask = tf.ones([args.batch, args.tokens])

    fast = tf.function(lambda: pairwise_scores(words, mask, sentence, visual)[0])
    direct = lambda: direct_word_scores(words, mask, visual)
    np.testing.assert_allclose(fast().numpy(), direct().numpy(), atol=1e-4)
    fast_s = timed(fast, args.repeats)
    direct_s = timed(direct, args.repeats)
    print(
        json.dumps(
            {
                "shape": vars(args),
                "pairwise_scores_s": round(fast_s, 4),
                "direct_s": round(direct_s, 4),
                "direct_over_pairwise": round(direct_s / fast_s, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
