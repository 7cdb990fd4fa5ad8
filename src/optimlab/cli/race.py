"""optimlab race: optimizers racing on a 2-D landscape; a table, a PNG, an HTML page, a GIF."""

from __future__ import annotations

import json

from ._outputs import check, failed, require, save


def register(verbs) -> None:
    from optimlab import landscapes
    from optimlab.lab.races import MAX_STEPS

    p = verbs.add_parser(
        "race", help="race optimizers on a 2-D landscape (the canyon 100x² + y² by default)",
        description="Run real optimizers from the same start on a small landscape and print the final loss "
        "and distance to the minimum of each; --out draws the paths on the contours beside log(loss) "
        "against the step, --html writes an offline interactive page with a step slider, --gif an "
        "animation.\n\nexample:\n  optimlab race --landscape canyon --optimizers sgd,momentum,adam "
        "--steps 100 --out race.png",
        epilog="landscapes (parameters as text: --landscape quadratic:kappa=100,angle=30; every one also "
        "takes noise=σ,seed=n):\n  " + landscapes.catalogue().replace("\n", "\n  ")
        + "\n\noptimizers: registry names and presets (optimlab list), in any case, with hyperparameters as "
        "name:key=value,… (quote them in the shell: 'adam:betas=(0.9,0.99)'); a landscape supplies a "
        "default lr (and on reddi the paper's betas) that an explicit lr= overrides.")
    p.add_argument("--landscape", "-l", default="canyon", help="name or name:key=value,… (default canyon)")
    p.add_argument("--optimizers", "-o", nargs="+", default=["sgd,momentum,adam"], metavar="OPT",
                   help="comma- or space-separated, e.g. sgd,momentum,adam or "
                   "'sgd:lr=0.01,momentum=0.9' adam "
                   "(default sgd,momentum,adam)")
    p.add_argument("--steps", "-n", type=int, default=None,
                   help=f"steps per optimizer, at most {MAX_STEPS:,} (default: the landscape's)")
    p.add_argument("--start", default=None, metavar="X,Y",
                   help="start point, e.g. --start -2,2 (default: the landscape's)")
    p.add_argument("--noise", type=float, default=None, help="σ of Gaussian noise added to every gradient")
    p.add_argument("--seed", type=int, default=None, help="seed of the gradient noise (default 0)")
    p.add_argument("--schedule", default="landscape", choices=["landscape", "constant", "inv_sqrt"],
                   help="lr schedule: the landscape's own (α/√t on reddi, else constant), constant, or α/√t")
    p.add_argument("--out", default=None, metavar="PNG", help="write the contour + log-loss figure here")
    p.add_argument("--html", default=None, metavar="HTML", help="write an interactive page (plotly, offline)")
    p.add_argument("--gif", default=None, metavar="GIF", help="write an animation of the race")
    p.add_argument("--json", action="store_true", help="print the result table as JSON")
    p.add_argument("--list", action="store_true", help="describe every landscape and exit")
    p.set_defaults(run=run)


PICTURES = (".png", ".svg", ".pdf", ".jpg", ".jpeg")


def _start(text: str | None):
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"--start takes numbers separated by commas, e.g. 1,1; got {text!r}") from None


def run(args) -> int:
    from optimlab import landscapes
    from optimlab.lab.races import race

    if args.list:
        for name in landscapes.available():
            L = landscapes.get(name)
            print(L.describe() + f"\n  {L.about}\n")
        return 0
    files = [(check(args.out, "--out", PICTURES), "save_png"),
             (check(args.html, "--html", (".html", ".htm")), "save_html"),
             (check(args.gif, "--gif", (".gif",)), "save_gif")]
    files = [(path, writer) for path, writer in files if path is not None]
    require(args.out, "matplotlib")
    require(args.gif, "matplotlib", "PIL")
    require(args.html, "plotly")
    from optimlab.lab import plots
    result = race(args.landscape, list(args.optimizers), steps=args.steps, start=_start(args.start),
                  noise=args.noise, seed=args.seed, schedule=args.schedule)
    if args.json:
        L = result.landscape
        print(json.dumps({"landscape": L.text, "formula": L.formula, "start": list(result.start),
                          "steps": result.steps, "noise": L.noise, "seed": L.seed, "minima": L.minima,
                          "rows": result.table()}, indent=2, ensure_ascii=False))
    else:
        print(result.format(), flush=True)
    saved = [save(path, lambda p, w=writer: getattr(plots, w)(result, p)) for path, writer in files]
    wrote = [str(path) for (path, _), ok in zip(files, saved) if ok]
    if wrote and not args.json:
        print("wrote " + ", ".join(wrote))
    return failed(saved)
