#!/usr/bin/env python
"""Train the testbed's small CLIP (open_clip CNN-4-testbed) on the generated captioned world.

    python tools/train_toy_clip.py --threads 2 --output weights/testbed_clip_cnn4.safetensors
    python tools/train_toy_clip.py --model-name ViT-8-testbed --threads 2 \
        --output weights/testbed_clip_vit8.safetensors                  # the class-token ViT

Defaults are the recipe of the shipped CNN (docs/TESTBED.md): a pattern-only-caption curriculum,
then full captions, half the images replaced by random crops captioned with what they show;
seed 0. Prints the curve (single-object zero-shot top-1, colour and pattern accuracy over all
class names; training-free dense zero-shot mIoU and background IoU on generated scenes), writes
one float16 safetensors file (recipe and curve in its metadata), then re-evaluates that file
through the teacher loader.
"""

import argparse
import json
import sys
import time
from dataclasses import fields

import torch

from clipdistill.testbed.toy_clip import (
    TESTBED_CLIP_WEIGHTS,
    ToyClipRecipe,
    evaluate_weights_file,
    save_toy_clip,
    train_toy_clip,
)
from clipdistill.utils.cli import add_debug_argument, positive_int, run_tool


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="train_toy_clip.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--output", default=TESTBED_CLIP_WEIGHTS, help="weights file to write")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads")
    defaults = ToyClipRecipe()
    for f in fields(ToyClipRecipe):
        value = getattr(defaults, f.name)
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(value), default=value)
    add_debug_argument(parser)
    args = parser.parse_args(argv)
    return run_tool("train_toy_clip.py", lambda: _train(args), debug=args.debug)


def _train(args) -> None:
    torch.set_num_threads(args.threads)
    recipe = ToyClipRecipe(
        **{f.name: getattr(args, f.name) for f in fields(ToyClipRecipe) if hasattr(args, f.name)}
    )
    start = time.perf_counter()
    model, history = train_toy_clip(recipe, log=lambda r: print(json.dumps(r), flush=True))
    minutes = (time.perf_counter() - start) / 60
    save_toy_clip(model, args.output, recipe, history)
    final = evaluate_weights_file(
        args.output,
        recipe.model_name,
        recipe.world,
        recipe.eval_per_class,
        recipe.image_size,
        recipe.eval_seed,
    )
    print(
        f"trained in {minutes:.1f} min; {args.output} (float16, loaded as the teacher): "
        + json.dumps(final)
    )


if __name__ == "__main__":
    sys.exit(main())
