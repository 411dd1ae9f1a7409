"""Training data-loading throughput per worker: atrous' pipeline vs. plain Pillow + numpy.

python benchmarks/data_loading.py [--iterations 30] [--num-images 6] [--size 1024x2048]
                                  [--root DATASET_IN_CITYSCAPES_LAYOUT] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys

from atrous.data.benchmark import benchmark_train_pipeline, format_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--num-images", type=int, default=6)
    parser.add_argument("--size", default="1024x2048", help="HxW of the generated images")
    parser.add_argument("--root", default=None, help="use this dataset instead of generating one")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args(argv)
    h, w = (int(v) for v in args.size.lower().split("x"))
    result = benchmark_train_pipeline(
        root=args.root,
        num_images=args.num_images,
        size=(h, w),
        iterations=args.iterations,
        seed=args.seed,
    )
    print(format_report(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
