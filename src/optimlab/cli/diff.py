"""optimlab diff A B: the difference between two optimizers' update rules."""

from __future__ import annotations


def register(verbs) -> None:
    p = verbs.add_parser("diff", help="show the lines in which two update rules differ",
                         description="Print a unified diff of two optimizers' update rules, each specialised "
                         "to its hyperparameters: `diff adam adamw` shows where the weight decay goes, "
                         "`diff adam amsgrad` the one max. A and B are registry names or presets, in any "
                         "case, or name:key=value,… (e.g. 'adam:amsgrad=True'); values are checked as "
                         "optimlab.create checks them.")
    p.add_argument("a", help="first optimizer (e.g. adam)")
    p.add_argument("b", help="second optimizer (e.g. adamw)")
    p.add_argument("--context", type=int, default=2,
                   help="unchanged lines shown around each change, >= 0 (default 2)")
    p.set_defaults(run=run)


def run(args) -> int:
    from optimlab.source import diff

    text = diff(args.a, args.b, context=args.context)
    print(text if text else f"{args.a} and {args.b} run the same rule with the same flags")
    return 0
