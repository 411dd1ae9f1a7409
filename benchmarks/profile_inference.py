"""Where one inference spends its time: torch.profiler's operator table for a config's model.

python benchmarks/profile_inference.py --config-file CONFIG.yaml [--size 512x1024]
    [--dtype bf16|fp32] [--threads 2] [--iters 2] [--rows 15] [KEY VALUE ...]

The model gets random weights (MODEL.WEIGHTS is ignored: nothing is downloaded, and where the
time goes does not depend on the weights). bf16 is the fast path of `atrous benchmark --dtype bf16
--channels-last --fold-bn`; fp32 is plain eager. Run it alone on the machine: another process on
the same cores changes the shares.
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch.profiler import ProfilerActivity, profile

from atrous.config import get_cfg
from atrous.deploy.fast import optimize_for_inference
from atrous.modeling import build_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--size", default="512x1024", help="HxW of the input")
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=2, help="profiled forward passes")
    parser.add_argument("--rows", type=int, default=15, help="operators shown")
    parser.add_argument("opts", nargs="*", help="config overrides as KEY VALUE pairs")
    args = parser.parse_args(argv)
    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list([*args.opts, "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"])
    torch.set_num_threads(args.threads)
    height, width = (int(v) for v in args.size.lower().split("x"))
    model = build_model(cfg).eval()
    if args.dtype == "bf16":
        model = optimize_for_inference(model, dtype="bfloat16")
    inputs = [{"image": torch.randint(0, 256, (3, height, width), dtype=torch.uint8)}]
    with torch.no_grad():
        model(inputs)  # warm-up: oneDNN picks and caches its kernels
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.iters):
                model(inputs)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
