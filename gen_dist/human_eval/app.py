"""The rating server (FastAPI): the page, the rater's next task, answers, and images by opaque id.

Routes (every one the same for real and generated images):
    GET  /                       the page (static HTML; sets the rater cookie at the first visit)
    GET  /static/...             its CSS and JS
    GET  /api/state              protocol, progress, the rater's name
    POST /api/name               {"name": "..."}: an optional name stored with the rater
    GET  /api/{protocol}/next    the next task: {"task", "images": [urls], "question", "done", "total"}
    POST /api/{protocol}/answer  {"task", "answer", "response_ms"}: 200, or 4xx storing nothing
    GET  /img/{id}               a PNG, by an id that is random per task
When the server is bound beyond the loopback interface every request needs the access token (the
?token= of the printed URL, then a cookie); on loopback, requests must name a loopback host.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from gen_dist.human_eval import db

if TYPE_CHECKING:  # tasks imports torch
    from gen_dist.human_eval.tasks import Study

STATIC = Path(__file__).with_name("static")
RATER, ACCESS = "gd_rater", "gd_access"
NO_STORE = {"Cache-Control": "no-store"}
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    task: str = Field(min_length=1, max_length=64)
    answer: str = Field(min_length=1, max_length=16)
    response_ms: float = Field(ge=0, le=86_400_000)


class Name(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=80)


def create_app(study: "Study", db_path: str | Path, access_token: str | None = None) -> FastAPI:
    app = FastAPI(title="gen_dist human evaluation", docs_url=None, redoc_url=None, openapi_url=None)
    db.init(db_path)

    def conn():
        return db.connect(db_path)

    @app.middleware("http")
    async def access(request: Request, call_next):
        if access_token is None:  # bound to loopback: only pages of this machine (no DNS rebinding)
            host = request.headers.get("host", "").rsplit(":", 1)[0].strip("[]")
            if host not in LOOPBACK:
                return PlainTextResponse("403: open the URL the rating server printed", status_code=403)
            return await call_next(request)
        given = request.query_params.get("token") or request.cookies.get(ACCESS) or ""
        if not secrets.compare_digest(given.encode(), access_token.encode()):
            return PlainTextResponse("403: open the URL the rating server printed (it carries the access token)",
                                     status_code=403)
        response = await call_next(request)
        if request.query_params.get("token"):
            response.set_cookie(ACCESS, access_token, httponly=True, samesite="strict")
        return response

    def rater_of(request: Request, c) -> str:
        rater = request.cookies.get(RATER, "")
        if not rater or len(rater) > 64 or not db.rater_exists(c, rater):
            raise HTTPException(401, "no rater: open the page first (it sets a cookie)")
        return rater

    def served(protocol: str) -> None:
        if protocol != study.protocol:
            raise HTTPException(404, f"this server runs the {study.protocol} protocol")

    @app.get("/")
    def page(request: Request):
        response = FileResponse(STATIC / "index.html", headers=NO_STORE)
        c = conn()
        try:
            rater = request.cookies.get(RATER, "")
            if not rater or len(rater) > 64 or not db.rater_exists(c, rater):
                rater = secrets.token_urlsafe(18)
                db.add_rater(c, rater)
                response.set_cookie(RATER, rater, max_age=365 * 86400, httponly=True, samesite="strict")
        finally:
            c.close()
        return response

    @app.get("/api/state")
    def state(request: Request):
        c = conn()
        try:
            rater = rater_of(request, c)
            done, total = db.progress(c, rater, study.protocol)
            name = c.execute("SELECT name FROM raters WHERE id = ?", (rater,)).fetchone()["name"]
        finally:
            c.close()
        return JSONResponse({"protocol": study.protocol, "done": done, "total": total or study_size(study),
                             "name": name or ""}, headers=NO_STORE)

    @app.post("/api/name")
    async def name(request: Request):
        body = parse(Name, await request.body())
        return await run_in_threadpool(set_name, body, request)

    def set_name(body: Name, request: Request):
        c = conn()
        try:
            db.set_name(c, rater_of(request, c), body.name.strip())
        finally:
            c.close()
        return JSONResponse({"ok": True}, headers=NO_STORE)

    @app.get("/api/{protocol}/next")
    def next_task(protocol: str, request: Request):
        served(protocol)
        c = conn()
        try:
            rater = rater_of(request, c)
            db.ensure_round(c, rater, protocol, study.draw_round)
            task = db.next_task(c, rater, protocol)
            done, total = db.progress(c, rater, protocol)
        finally:
            c.close()
        if task is None:
            return JSONResponse({"task": None, "images": [], "question": "", "done": done, "total": total},
                                headers=NO_STORE)
        images = [f"/img/{task['image_a']}"] + ([f"/img/{task['image_b']}"] if task["image_b"] else [])
        return JSONResponse({"task": task["id"], "images": images, "question": task["question"], "done": done,
                             "total": total}, headers=NO_STORE)

    @app.post("/api/{protocol}/answer")
    async def answer(protocol: str, request: Request):
        served(protocol)  # an unknown protocol is a 404 before the body is read
        body = parse(Answer, await request.body())
        if body.answer not in db.PROTOCOLS[protocol]:
            raise HTTPException(422, f"answer must be one of {list(db.PROTOCOLS[protocol])}")
        return await run_in_threadpool(store, protocol, body, request)

    def store(protocol: str, body: Answer, request: Request):
        c = conn()
        try:
            rater = rater_of(request, c)
            try:
                db.record(c, rater, protocol, body.task, body.answer, body.response_ms)
            except db.NotYourTask:
                raise HTTPException(404, "no such task for this rater") from None
            except db.AlreadyAnswered:
                raise HTTPException(409, "this task is answered already") from None
            done, total = db.progress(c, rater, protocol)
        finally:
            c.close()
        return JSONResponse({"ok": True, "done": done, "total": total}, headers=NO_STORE)

    @app.get("/img/{image_id}")
    def image(image_id: str, request: Request):
        c = conn()
        try:
            found = db.image_of(c, rater_of(request, c), image_id) if len(image_id) <= 64 else None
        finally:
            c.close()
        if found is None or tuple(found) not in study.images:
            raise HTTPException(404, "no such image")
        return Response(study.images[tuple(found)], media_type="image/png", headers=NO_STORE)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def parse(model, raw: bytes):
    """A JSON object body -> the pydantic model, or a 422 that echoes nothing of the input."""
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
        return model.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'body'}: {err['msg']}" for err in e.errors())
        raise HTTPException(422, f"malformed body: {problems}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise HTTPException(422, f"malformed body: not JSON ({type(e).__name__})") from None


def study_size(study: "Study") -> int:
    k = len(study.models)
    return 2 * k * study.n if study.protocol == "real-or-fake" else k * (k - 1) // 2 * study.n
