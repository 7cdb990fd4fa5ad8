"""The playground's FastAPI app: the pages, their scripts, and the JSON endpoints under /api/.

    from optimlab.web import create_app
    app = create_app(workers=2)          # serve with uvicorn; `optimlab serve` does exactly that

Everything a page needs is served from this package (plotly.js from the installed plotly package), so
the playground works offline. Heavy computations go through a bounded `Pool`; the cheap ones
(schedules, memory, diff) run in the server's thread pool.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from . import compute
from .models import (
    LIMITS,
    BreakItRequest,
    ClaimsRequest,
    DiffRequest,
    MemoryRequest,
    PreconditionRequest,
    RaceRequest,
    ScheduleRequest,
    SurfaceRequest,
    SweepRequest,
)
from .pool import Busy, Failed, Pool, TooLong

STATIC = Path(__file__).parent / "static"
PAGES = {"race": "Race", "precondition": "Feel preconditioning", "breakit": "Break It",
         "schedules": "Schedules", "sweep": "LR sweep", "memory": "Memory planner", "diff": "Diff",
         "claims": "Claims"}

# What the computing endpoints may answer besides 200, for the OpenAPI schema (and schemathesis).
REFUSALS = {422: {"description": "invalid input (the message names the field), or more work than the time "
                  "limit allows"},
            429: {"description": "too many computations running or waiting; retry after a moment"}}


def _refused(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"detail": [{"loc": ["body"], "msg": message, "type": "value_error"}]}, status,
                        headers=headers)


def create_app(workers: int = 2, queue: int = 16, time_scale: float = 1.0, warm: bool = True) -> FastAPI:
    """The app with its own pool of `workers` processes (up to `queue` requests wait for one).

    time_scale multiplies every computation's time limit (tests shrink it to see the limit act).
    """
    state: dict = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        state["pool"] = app.state.pool = Pool(workers=workers, queue=queue, time_scale=time_scale)
        if warm:
            await run_in_threadpool(state["pool"].warm)
        yield
        state["pool"].close()

    # no /docs or /redoc: FastAPI's explorers load their scripts from a CDN, and the playground is offline
    app = FastAPI(title="optimlab playground", version="0.1.0", lifespan=lifespan, docs_url=None,
                  redoc_url=None,
                  description="The lessons' interactive demos, computed by the real optimlab library.")

    @app.exception_handler(Busy)
    async def busy(request: Request, err: Busy):
        return _refused(429, str(err), headers={"Retry-After": "1"})

    @app.exception_handler(TooLong)
    async def too_long(request: Request, err: TooLong):
        return _refused(422, str(err))

    @app.exception_handler(Failed)
    async def failed(request: Request, err: Failed):
        return _refused(422, str(err))

    async def heavy(kind: str, body) -> JSONResponse:
        return JSONResponse(await state["pool"].run(kind, body.model_dump()))

    async def cheap(fn, body) -> JSONResponse:
        try:
            return JSONResponse(await run_in_threadpool(fn, body.model_dump()))
        except (ValueError, TypeError, ArithmeticError) as err:
            raise Failed(f"{type(err).__name__}: {err}") from None

    # --- pages and their files ---------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html")

    @app.get("/static/vendor/plotly.min.js", include_in_schema=False)
    async def plotly_js():
        return FileResponse(_plotly_js(), media_type="text/javascript")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/{page}", include_in_schema=False)
    async def page(page: str):
        if page not in PAGES:
            raise HTTPException(404, f"no page {page!r}; pages: {', '.join(PAGES)}")
        return FileResponse(STATIC / f"{page}.html")

    # --- the API -----------------------------------------------------------------------------------
    @app.get("/api/meta", summary="landscapes, optimizers, schedules, ablations, claims and the limits")
    async def meta() -> dict:
        return _meta()

    @app.post("/api/race", responses=REFUSALS, summary="optimizers racing on a landscape (optimlab race)")
    async def race(body: RaceRequest):
        return await heavy("race", body)

    @app.post("/api/surface", responses=REFUSALS, summary="a landscape's loss on a grid, for contours")
    async def surface(body: SurfaceRequest):
        return await heavy("surface", body)

    @app.post("/api/precondition", responses=REFUSALS, summary="a turned ill-conditioned quadratic, raced")
    async def precondition(body: PreconditionRequest):
        return await heavy("precondition", body)

    @app.post("/api/breakit", responses=REFUSALS, summary="one Break It ablation at a reduced size")
    async def breakit(body: BreakItRequest):
        return await heavy("breakit", body)

    @app.post("/api/sweep", responses=REFUSALS, summary="final loss across learning rates (optimlab sweep)")
    async def sweep(body: SweepRequest):
        return await heavy("sweep", body)

    @app.post("/api/claims", responses=REFUSALS, summary="measure claims at reduced size, with verdicts")
    async def claims(body: ClaimsRequest):
        return await heavy("claims", body)

    @app.post("/api/schedule", responses=REFUSALS, summary="a learning-rate schedule's curve")
    async def schedule(body: ScheduleRequest):
        return await cheap(compute.schedule, body)

    @app.post("/api/memory", responses=REFUSALS, summary="the memory plan, per rank, for every ZeRO stage")
    async def memory(body: MemoryRequest):
        return await cheap(compute.memory, body)

    @app.post("/api/diff", responses=REFUSALS, summary="the diff of two optimizers' update rules")
    async def diff(body: DiffRequest):
        return await cheap(compute.diff, body)

    return app


@functools.cache
def _meta() -> dict:
    return {**compute.meta(), "claims": compute.claims_catalogue(), "limits": LIMITS}


def _plotly_js() -> Path:
    import plotly

    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not path.exists():
        raise HTTPException(404, "plotly.min.js is not in the installed plotly package")
    return path
