"""The `reasonrl` command line: `reasonrl explain|train|eval|generate|export|demo|plot ...`."""

from __future__ import annotations

import argparse
import sys


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _cmd_explain(args) -> int:
    from reasonrl.explain import explain

    n = len(args.rewards)
    if args.num_generations < 2 or n % args.num_generations:
        raise UsageError(f"--rewards has {n} values, which do not split into groups of --num-generations "
                         f"{args.num_generations} (need a multiple of it, G >= 2)")
    for name in ("log_ratios", "ref_gaps"):
        values = getattr(args, name)
        if values is not None and len(values) != n:
            raise UsageError(f"--{name.replace('_', '-')} needs {n} values, one per reward (got {len(values)})")
    explain(args.rewards, args.num_generations, eps=args.eps, log_ratios=args.log_ratios, ref_gaps=args.ref_gaps,
            epsilon=args.epsilon, beta=args.beta, scale=args.scale)
    return 0


class UsageError(Exception):
    """A user mistake: printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reasonrl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("explain", help="walk through the GRPO maths of one step, computed live")
    p.add_argument("--rewards", type=_floats, default=[1, 0, 0, 0, 0, 0, 0, 0],
                   help="comma-separated rewards, grouped by prompt (default: the seed's 1,0,0,0,0,0,0,0)")
    p.add_argument("--num-generations", type=int, default=4, help="completions per prompt, G (default 4)")
    p.add_argument("--eps", type=float, default=1e-8, help="added to the std (default 1e-8, as in the seed)")
    p.add_argument("--log-ratios", type=_floats, default=None,
                   help="log pi_theta - log pi_old per completion (default all 0: the first, on-policy pass)")
    p.add_argument("--ref-gaps", type=_floats, default=None,
                   help="log pi_ref - log pi_old per completion (default all 0: policy == reference)")
    p.add_argument("--epsilon", type=float, default=0.2, help="clip range (default 0.2)")
    p.add_argument("--beta", type=float, default=0.04, help="KL coefficient (default 0.04)")
    p.add_argument("--scale", choices=["group", "batch", "none"], default="group", help="scale_rewards")
    p.set_defaults(func=_cmd_explain)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UsageError as error:
        print(f"reasonrl {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
