"""optimlab serve: the playground in a browser (needs the extra: pip install 'optimlab[web]')."""

from __future__ import annotations

import argparse


def register(verbs) -> None:
    p = verbs.add_parser(
        "serve", help="the playground: the lessons' interactive demos in a browser, computed by optimlab",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Serve the playground: race optimizers on a landscape, feel preconditioning, Break It, "
        "schedules, an LR sweep, the memory planner, rule diffs and the claims report, all computed by the "
        "library. JSON endpoints live under /api/ (schema at /openapi.json). Everything is served from the "
        "installed packages: it works offline.\n\nexample: optimlab serve --port 8000 --open",
        epilog="it listens on 127.0.0.1 (this machine only) unless --host says otherwise; computations run "
        "in --workers processes, each with a time limit, and requests beyond --queue waiting ones get 429.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--open", action="store_true", help="open the playground in a web browser")
    p.add_argument("--workers", type=int, default=2,
                   help="processes computing races and ablations (default 2)")
    p.add_argument("--queue", type=int, default=16, help="requests that may wait for a worker (default 16)")
    p.set_defaults(run=run)


def run(args) -> int:
    import uvicorn  # a missing web extra is one line naming it (exit status 3), as for every verb

    from optimlab.web import create_app
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be 0–65535, got {args.port}")
    if args.workers < 1 or args.queue < 0:
        raise ValueError("--workers must be ≥ 1 and --queue ≥ 0")
    url = f"http://{args.host}:{args.port}/"
    if args.open:
        import threading
        import webbrowser

        threading.Timer(2.0, webbrowser.open, (url,)).start()
    print(f"optimlab playground on {url}  (Ctrl+C stops it)", flush=True)
    uvicorn.run(create_app(workers=args.workers, queue=args.queue), host=args.host, port=args.port,
                log_level="warning")
    return 0
