"""optimlab.web: the playground, the lessons' interactive demos computed by the real library.

    optimlab serve --port 8000 --open        # needs the extra: pip install 'optimlab[web]'

Pages: race, preconditioning, Break It, schedules, LR sweep, memory planner, diff, claims; JSON
endpoints under /api/ (schema at /openapi.json). See docs/playground.md.
"""

from .app import PAGES, create_app

__all__ = ["PAGES", "create_app"]
