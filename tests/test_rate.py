"""launch/rate.py, the human evaluation server, on a tiny real checkpoint: rating rounds of both
protocols through the page in a real browser (Selenium + Debian's chromium), the page never
revealing which image is real, restarts, bad requests and bad command lines."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from http.cookiejar import CookieJar
from pathlib import Path
from urllib.error import HTTPError
from urllib.request import HTTPCookieProcessor, Request, build_opener

import numpy as np
import pytest
import torch

from conftest import PYTHON, REPO, SHARD_CACHE, TINY, run_env, train
from gen_dist.human_eval import db, scores

_spec = importlib.util.spec_from_file_location("rate_cli", REPO / "launch" / "rate.py")
rate_cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rate_cli)

TOKEN = re.compile(r"^[A-Za-z0-9_-]{24}$")  # task and image ids: 18 random bytes, base64url


# --- a tiny trained model, and a second one ----------------------------------------------------
@pytest.fixture(scope="session")
def runs(data_root, tmp_path_factory) -> Path:
    """runs/vae: a 2-step MLP VAE on real MNIST; runs/noisy: its decoder with perturbed weights."""
    base = tmp_path_factory.mktemp("rate_runs")
    train(data_root, 1, "--config", "configs/vae_mnist.yaml", *TINY, "train.max_steps=2", f"run.dir={base / 'vae'}",
          "tracking.wandb=false")
    state = torch.load(base / "vae" / "checkpoints" / "final.pt", weights_only=True)
    g = torch.Generator().manual_seed(0)
    state["G_state"] = {k: v + 0.5 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
                        for k, v in state["G_state"].items()}
    (base / "noisy" / "checkpoints").mkdir(parents=True)
    torch.save(state, base / "noisy" / "checkpoints" / "final.pt")
    return base


def _final(runs: Path, name: str) -> str:
    return str(runs / name / "checkpoints" / "final.pt")


# --- the server as a subprocess, and an HTTP client with cookies -------------------------------
class Server:
    def __init__(self, data_root: str, *args, timeout: float = 120):
        self.proc = subprocess.Popen([PYTHON, str(REPO / "launch" / "rate.py"), *map(str, args)], cwd=REPO,
                                     env=run_env(data_root), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, start_new_session=True)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in self.proc.stdout], daemon=True).start()
        self.out, deadline = [], time.time() + timeout
        while True:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                line = None
            if line:
                self.out.append(line)
                if line.startswith("rate: open "):
                    self.url = line.split()[-1]
                    break
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise AssertionError(f"rate.py did not start: {''.join(self.out)}\n{self.proc.stderr.read()[-3000:]}")
        port = int(re.match(r"http://[^/]+:(\d+)/", self.url).group(1))
        self.base = f"http://127.0.0.1:{port}"  # the printed host may be this machine's name
        self.query = self.url.split("/", 3)[3]  # "" or "?token=..."

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
        self.proc.wait(timeout=30)


class Client:
    def __init__(self, server: Server):
        self.server, self.jar = server, CookieJar()
        self.opener = build_opener(HTTPCookieProcessor(self.jar))

    def request(self, method: str, path: str, body=None, headers=None) -> tuple[int, bytes, dict]:
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        req = Request(self.server.base + path, data=data, method=method,
                      headers={**({"Content-Type": "application/json"} if data is not None else {}), **(headers or {})})
        try:
            with self.opener.open(req, timeout=30) as r:
                return r.status, r.read(), dict(r.headers)
        except HTTPError as e:
            return e.code, e.read(), dict(e.headers)

    def json(self, method: str, path: str, body=None) -> tuple[int, dict]:
        status, raw, _ = self.request(method, path, body)
        return status, json.loads(raw)

    def visit(self) -> "Client":
        assert self.request("GET", "/" + self.server.query)[0] == 200
        return self

    @property
    def rater(self) -> str:
        return next(c.value for c in self.jar if c.name == "gd_rater")


def _count(path) -> int:
    return len(db.judgements(path))


# --- the browser -------------------------------------------------------------------------------
@pytest.fixture
def browser(tmp_path):
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.skip("chromium and chromedriver are not installed: apt-get install chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: pip install -e '.[test]'")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=900,760", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    yield driver
    driver.quit()


def _wait(driver, condition, timeout: float = 30, what: str = "the page"):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: condition(d), message=f"waiting for {what}")


def _waiting_at(driver, done: int, total: int) -> bool:
    from selenium.webdriver.common.by import By

    return (driver.find_element(By.ID, "progress").text == f"{done} / {total}"
            and driver.find_element(By.ID, "rate").get_attribute("data-state") == "waiting"
            and all(img.get_attribute("complete") == "true" and int(img.get_attribute("naturalWidth")) > 0
                    for img in driver.find_elements(By.CSS_SELECTOR, "#images img")))


def _start_round(driver, server: Server, name: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver.get(server.url.replace(server.url.split("/")[2], server.base.split("/")[2]))
    _wait(driver, lambda d: d.find_element(By.ID, "intro").is_displayed(), what="the instructions")
    field = driver.find_element(By.ID, "name")
    field.send_keys(name)
    field.send_keys(Keys.ENTER)


def _answer(driver, how: tuple[str, object]) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    kind, what = how
    if kind == "key":
        ActionChains(driver).send_keys(what).perform()
    elif kind == "button":
        driver.find_element(By.ID, what).click()
    else:  # an image of a pair
        driver.find_elements(By.CSS_SELECTOR, "#images img")[what].click()


def _screenshot(driver, path: Path, docs_name: str) -> None:
    driver.save_screenshot(str(path))
    if os.environ.get("GEN_DIST_RATE_DOCS"):  # refresh the screenshots under docs/
        shutil.copy(path, Path(os.environ["GEN_DIST_RATE_DOCS"]) / docs_name)


def _report(data_root, database) -> str:
    proc = subprocess.run([PYTHON, str(REPO / "launch" / "rate.py"), "--report", str(database)], cwd=REPO,
                          env=run_env(data_root), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_real_or_fake_round_in_the_browser(runs, data_root, tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    database = tmp_path / "rf.sqlite"
    server = Server(data_root, "--checkpoint", _final(runs, "vae"), "--checkpoint", _final(runs, "noisy"),
                    "--images", 2, "--db", database)
    try:
        _start_round(browser, server, "Ada")
        _wait(browser, lambda d: _waiting_at(d, 0, 8), what="the first image")
        assert browser.find_element(By.ID, "question").text.startswith("Is this a real image")
        _screenshot(browser, tmp_path / "real_or_fake.png", "human_eval_real_or_fake.png")
        moves = [("key", "f"), ("key", "j"), ("key", Keys.ARROW_LEFT), ("key", Keys.ARROW_RIGHT),
                 ("button", "choice-0"), ("button", "choice-1"), ("key", "F"), ("key", Keys.ARROW_RIGHT)]
        said = ["real", "fake", "real", "fake", "real", "fake", "real", "fake"]
        for i, move in enumerate(moves):
            _wait(browser, lambda d, i=i: _waiting_at(d, i, 8), what=f"task {i + 1}")
            _answer(browser, move)
        _wait(browser, lambda d: d.find_element(By.ID, "done").is_displayed(), what="the end of the round")
        rater = browser.get_cookie("gd_rater")["value"]
    finally:
        server.stop()
    rows = db.judgements(database)
    assert [r["answer"] for r in rows] == said
    assert {(r["rater_id"], r["rater_name"], r["protocol"]) for r in rows} == {(rater, "Ada", "real-or-fake")}
    assert all(r["response_ms"] > 0 and r["image_b"] is None for r in rows)
    # per model: 2 of its samples and 2 real test images, every task answered once
    for model in ("vae", "noisy"):
        block = [r for r in rows if r["block"] == model]
        assert sorted(r["source_a"] for r in block) == sorted(["real", "real", model, model])
        assert sorted(r["index_a"] for r in block if r["source_a"] == model) == [0, 1]
    assert len({r["task_id"] for r in rows}) == 8
    by_hand = {}
    for model in ("vae", "noisy"):
        block = [r for r in rows if r["block"] == model]
        fooled = sum(r["source_a"] != "real" and r["answer"] == "real" for r in block)
        missed = sum(r["source_a"] == "real" and r["answer"] == "fake" for r in block)
        by_hand[model] = ((fooled + missed) / 4, fooled / 2)
    computed = {s.model: (s.error_rate, s.fake_as_real) for s in scores.real_or_fake(rows)}
    for model, expected in by_hand.items():
        assert computed[model] == pytest.approx(expected)
    printed = _report(data_root, database)
    for model, (error, fooled) in by_hand.items():
        line = next(line for line in printed.splitlines() if line.startswith(f"| {model} |"))
        assert f"| 4 | 1 | {100 * error:.1f}% [" in line and f"| {100 * fooled:.1f}% [" in line
    assert (tmp_path / "human_eval.md").read_text().count("| vae |") == 1


def test_pairwise_round_in_the_browser(runs, data_root, tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    database = tmp_path / "pw.sqlite"
    server = Server(data_root, "--protocol", "pairwise", "--checkpoint", f"vae={_final(runs, 'vae')}",
                    "--checkpoint", f"noisy={_final(runs, 'noisy')}", "--images", 3, "--db", database)
    try:
        _start_round(browser, server, "Grace")
        _wait(browser, lambda d: _waiting_at(d, 0, 3), what="the first pair")
        assert browser.find_element(By.ID, "question").text == "Which looks more like a real MNIST image?"
        browser.set_window_size(390, 844)  # a phone: both images and both buttons inside the width
        width = browser.execute_script("return document.documentElement.clientWidth")
        for element in browser.find_elements(By.CSS_SELECTOR, "#images img, .choice"):
            rect = browser.execute_script("return arguments[0].getBoundingClientRect()", element)
            assert 0 <= rect["left"] and rect["right"] <= width, (rect, width)
        _screenshot(browser, tmp_path / "pairwise_phone.png", "human_eval_pairwise_phone.png")
        browser.set_window_size(900, 760)
        _screenshot(browser, tmp_path / "pairwise.png", "human_eval_pairwise.png")
        moves = [("image", 0), ("key", "j"), ("key", Keys.ARROW_LEFT)]
        for i, move in enumerate(moves):
            _wait(browser, lambda d, i=i: _waiting_at(d, i, 3), what=f"pair {i + 1}")
            _answer(browser, move)
        _wait(browser, lambda d: d.find_element(By.ID, "done").is_displayed(), what="the end of the round")
    finally:
        server.stop()
    rows = db.judgements(database)
    assert [r["answer"] for r in rows] == ["left", "right", "left"]
    assert {r["rater_name"] for r in rows} == {"Grace"} and all(r["response_ms"] > 0 for r in rows)
    assert sorted(r["index_a"] for r in rows) == [0, 1, 2] and all(r["index_a"] == r["index_b"] for r in rows)
    assert all({r["source_a"], r["source_b"]} == {"vae", "noisy"} for r in rows)
    wins = {"vae": 0, "noisy": 0}
    for r in rows:
        wins[r["source_a"] if r["answer"] == "left" else r["source_b"]] += 1
    computed = {s.model: s for s in scores.pairwise(rows)}
    for model, won in wins.items():
        assert computed[model].win_rate == pytest.approx(won / 3)
        assert computed[model].strength == pytest.approx((won + 0.5) / 4)  # 2 models: (wins + 1/2) / (games + 1)
    printed = _report(data_root, database)
    for model, won in wins.items():
        line = next(line for line in printed.splitlines() if f"| {model} |" in line)
        assert f"| {100 * won / 3:.1f}% [" in line and f"| {(won + 0.5) / 4:.3f} [" in line


# --- the page never tells real from fake -------------------------------------------------------
@pytest.fixture(scope="module")
def api(runs, data_root, tmp_path_factory):
    """A real-or-fake server over both models for the API tests."""
    database = tmp_path_factory.mktemp("rate_api") / "human_eval.sqlite"
    server = Server(data_root, "--checkpoint", _final(runs, "vae"), "--checkpoint", _final(runs, "noisy"),
                    "--images", 2, "--db", database)
    server.db = database
    yield server
    server.stop()


def test_the_page_never_reveals_which_image_is_real(api, runs, data_root, monkeypatch):
    from PIL import Image

    monkeypatch.setenv("GEN_DIST_DATA", data_root)
    monkeypatch.setenv("GEN_DIST_SHARDS", SHARD_CACHE)

    from gen_dist.human_eval.sources import generated, load_model, real_test_images

    client = Client(api)
    status, html, _ = client.request("GET", "/")
    page = html.decode()
    assert status == 200 and page == (REPO / "gen_dist" / "human_eval" / "static" / "index.html").read_text()
    assert "<img" not in page and "vae" not in page and "noisy" not in page
    tasks, image_heads, image_bytes = [], [], {}
    while True:
        status, task = client.json("GET", "/api/real-or-fake/next")
        assert status == 200 and set(task) == {"task", "images", "question", "done", "total"}
        if task["task"] is None:
            break
        assert TOKEN.match(task["task"]) and len(task["images"]) == 1
        (url,) = task["images"]
        assert re.fullmatch(r"/img/[A-Za-z0-9_-]{24}", url)
        status, png, headers = client.request("GET", url)
        assert status == 200
        image_heads.append({k.lower(): v for k, v in headers.items() if k.lower() != "date"})
        image_bytes[url[5:]] = png
        tasks.append(task)
        # everything but the random ids and the count is the same for every task
        assert client.json("POST", "/api/real-or-fake/answer",
                           {"task": task["task"], "answer": "real", "response_ms": 500})[0] == 200
    assert len(tasks) == 8 and len({t["question"] for t in tasks}) == 1
    assert [t["done"] for t in tasks] == list(range(8)) and {t["total"] for t in tasks} == {8}
    assert all(h == image_heads[0] for h in image_heads)  # same type, cache policy and byte count
    assert len({len(b) for b in image_bytes.values()}) == 1
    assert not any(word in json.dumps(tasks) for word in ("fake", "noisy", "vae", "source", "model"))
    # behind the ids: real test images and the models' samples i from the evaluation's latent i
    rows = [r for r in db.judgements(api.db) if r["rater_id"] == client.rater]
    assert {r["source_a"] for r in rows} == {"real", "vae", "noisy"}
    models = {name: load_model(name, _final(runs, name)) for name in ("vae", "noisy")}
    seed = models["vae"].cfg.seed
    real, indices, _ = real_test_images(models["vae"], 4, seed)
    expected = {("real", i): img for i, img in zip(indices, real)}
    for name, m in models.items():
        expected.update({(name, i): img for i, img in enumerate(generated(m, 2, seed))})
    for r in rows:
        shown = np.asarray(Image.open(io.BytesIO(image_bytes[r["image_a"]])))
        assert shown.shape == (280, 280)  # 28 px, nearest-neighbour upscaled 10x
        assert np.array_equal(shown[::10, ::10], expected[(r["source_a"], r["index_a"])][0].numpy())
        assert np.array_equal(shown, np.kron(shown[::10, ::10], np.ones((10, 10), dtype=np.uint8)))


# --- bad requests: 4xx, nothing stored ---------------------------------------------------------
def test_answer_to_a_task_of_another_rater_is_refused(api):
    mine, other = Client(api).visit(), Client(api).visit()
    _, task = mine.json("GET", "/api/real-or-fake/next")
    before = _count(api.db)
    assert other.request("POST", "/api/real-or-fake/answer",
                         {"task": task["task"], "answer": "fake", "response_ms": 10})[0] == 404
    assert other.request("POST", "/api/real-or-fake/answer",
                         {"task": "A" * 24, "answer": "fake", "response_ms": 10})[0] == 404  # no such task
    assert other.request("GET", task["images"][0])[0] == 404  # nor its image
    assert _count(api.db) == before


def test_replayed_answer_is_refused(api):
    client = Client(api).visit()
    _, task = client.json("GET", "/api/real-or-fake/next")
    before = _count(api.db)
    body = {"task": task["task"], "answer": "fake", "response_ms": 10}
    assert client.request("POST", "/api/real-or-fake/answer", body)[0] == 200
    assert client.request("POST", "/api/real-or-fake/answer", body)[0] == 409
    assert client.request("POST", "/api/real-or-fake/answer", {**body, "answer": "real"})[0] == 409
    rows = [r for r in db.judgements(api.db) if r["task_id"] == task["task"]]
    assert _count(api.db) == before + 1 and [r["answer"] for r in rows] == ["fake"]


@pytest.mark.parametrize("body", [
    b"{not json", b"[1, 2]", b'"real"', b"", b'{"task": "T", "answer": "real"}',
    b'{"task": "T", "answer": "real", "response_ms": 5, "source": "real"}',
    b'{"task": "T", "answer": "real", "response_ms": NaN}', b'{"task": "T", "answer": "real", "response_ms": -1}',
    b'{"task": "T", "answer": "left", "response_ms": 5}', b'{"task": "T", "answer": "real", "response_ms": "soon"}',
], ids=["not-json", "array", "string", "empty", "missing-time", "extra-field", "nan", "negative", "wrong-answer",
        "time-not-number"])
def test_malformed_body_is_refused(api, body):
    client = Client(api).visit()
    _, task = client.json("GET", "/api/real-or-fake/next")
    before = _count(api.db)
    status, raw, _ = client.request("POST", "/api/real-or-fake/answer", body.replace(b'"T"', json.dumps(task["task"]).encode()))
    assert status == 422, raw
    assert _count(api.db) == before


def test_unknown_protocol_is_refused(api):
    client = Client(api).visit()
    _, task = client.json("GET", "/api/real-or-fake/next")
    before = _count(api.db)
    body = {"task": task["task"], "answer": "real", "response_ms": 10}
    for protocol in ("hype", "pairwise"):  # unknown, and one this server does not run
        assert client.request("POST", f"/api/{protocol}/answer", body)[0] == 404
        assert client.request("GET", f"/api/{protocol}/next")[0] == 404
    assert client.request("POST", "/api/real-or-fake/answer", {**body, "answer": "left"})[0] == 422
    assert _count(api.db) == before


def test_requests_without_the_rater_cookie_are_refused(api):
    stranger = Client(api)  # never opened the page
    assert stranger.request("GET", "/api/real-or-fake/next")[0] == 401
    assert stranger.request("POST", "/api/real-or-fake/answer", {"task": "A" * 24, "answer": "real",
                                                                  "response_ms": 1})[0] == 401


def test_loopback_server_refuses_other_host_names(api):
    # a page of another site resolving its name to 127.0.0.1 (DNS rebinding) is refused
    client = Client(api)
    assert client.request("GET", "/", headers={"Host": "rebind.example:80"})[0] == 403
    assert client.request("GET", "/", headers={"Host": "localhost"})[0] == 200


# --- a restarted server keeps every judgement once ---------------------------------------------
def test_restart_keeps_every_judgement_once(runs, data_root, tmp_path):
    database = tmp_path / "restart.sqlite"
    args = ("--checkpoint", _final(runs, "vae"), "--images", 2, "--db", database, "--host", "0.0.0.0")
    first = Server(data_root, *args)
    try:
        assert first.query.startswith("?token=")  # beyond loopback: a token, and nothing without it
        assert Client(first).request("GET", "/")[0] == 403
        assert Client(first).request("GET", "/?token=wrong")[0] == 403
        client = Client(first).visit()
        seen = []
        for _ in range(2):
            _, task = client.json("GET", "/api/real-or-fake/next")
            seen.append(task["task"])
            assert client.request("POST", "/api/real-or-fake/answer",
                                  {"task": task["task"], "answer": "real", "response_ms": 20})[0] == 200
        _, pending = client.json("GET", "/api/real-or-fake/next")
    finally:
        first.stop(signal.SIGKILL)  # no clean shutdown
    second = Server(data_root, *args)
    try:
        assert second.query == first.query  # the same token: links handed out keep working
        client.server = second
        status, state = client.json("GET", "/api/state")
        assert status == 200 and (state["done"], state["total"]) == (2, 4)
        _, task = client.json("GET", "/api/real-or-fake/next")
        assert task["task"] == pending["task"] and task["done"] == 2  # the same round, where it stopped
        assert client.request("GET", task["images"][0])[0] == 200
        assert client.request("POST", "/api/real-or-fake/answer",
                              {"task": seen[0], "answer": "fake", "response_ms": 20})[0] == 409
        while task["task"] is not None:
            assert client.request("POST", "/api/real-or-fake/answer",
                                  {"task": task["task"], "answer": "fake", "response_ms": 20})[0] == 200
            _, task = client.json("GET", "/api/real-or-fake/next")
    finally:
        second.stop()
    rows = db.judgements(database)
    assert len(rows) == 4 and len({r["task_id"] for r in rows}) == 4
    assert [r["answer"] for r in rows] == ["real", "real", "fake", "fake"]
    assert [r["task_id"] for r in rows[:3]] == [*seen, pending["task"]]


# --- bad command lines: exit 2, one line --------------------------------------------------------
@pytest.fixture(scope="module")
def broken(runs, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("broken")
    state = torch.load(_final(runs, "vae"), weights_only=True)
    key = next(k for k, v in state["G_state"].items() if v.is_floating_point())
    state["G_state"][key][0] = float("nan")
    torch.save(state, out / "nan.pt")
    step = torch.load(next((runs / "vae" / "checkpoints").glob("step_*.pt")), weights_only=True)
    del step["models"]["G"]
    step["ema"] = None
    torch.save(step, out / "no_generator.pt")
    return {"nan": out / "nan.pt", "nogen": out / "no_generator.pt", "dir": out}


@pytest.mark.parametrize("args,message", [
    (["--checkpoint", "{dir}/missing.pt"], "does not exist"),
    (["--checkpoint", "{nan}"], "non-finite weights"),
    (["--checkpoint", "{nogen}"], "holds no generator"),
    (["--protocol", "pairwise", "--checkpoint", "{vae}"], "at least two --checkpoint"),
    (["--protocol", "hype", "--checkpoint", "{vae}"], "unknown --protocol 'hype'"),
    (["--checkpoint", "{vae}", "--images", "0"], "--images 0"),
    (["--report", "{dir}/none.sqlite"], "does not exist"),
], ids=["missing", "non-finite", "no-generator", "pairwise-one-model", "unknown-protocol", "images-0", "report-missing"])
def test_bad_command_line_is_one_line_and_exit_2(args, message, runs, broken, tmp_path, capsys):
    paths = {**broken, "vae": _final(runs, "vae")}
    assert rate_cli.main([a.format(**paths) for a in args] + ["--db", str(tmp_path / "db.sqlite")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.startswith("gen_dist: error:") and "\n" not in err, err
    assert not (tmp_path / "db.sqlite").exists()


def test_port_in_use_exits_2_naming_it(runs, data_root, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = subprocess.run([PYTHON, str(REPO / "launch" / "rate.py"), "--checkpoint", _final(runs, "vae"),
                               "--port", str(port), "--db", str(tmp_path / "db.sqlite")], cwd=REPO,
                              env=run_env(data_root), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"gen_dist: error: port {port} on 127.0.0.1 is in use: pick another --port, or omit --port for a free one"]


# --- the study report --------------------------------------------------------------------------
def test_ablate_report_only_adds_human_scores(data_root, tmp_path, monkeypatch):
    database = tmp_path / "human_eval.sqlite"
    db.init(database)
    conn = db.connect(database)
    db.add_rater(conn, "r1")
    draw = [{"id": f"t{i}", "block": "vae", "image_a": f"i{i}", "source_a": src, "index_a": i, "question": "q"}
            for i, src in enumerate(["vae", "vae", "real", "real"])]
    db.ensure_round(conn, "r1", "real-or-fake", lambda: draw)
    for i, answer in enumerate(["real", "fake", "real", "real"]):  # errors: t0 (fake judged real)
        db.record(conn, "r1", "real-or-fake", f"t{i}", answer, 100)
    conn.close()
    spec = importlib.util.spec_from_file_location("ablate_cli", REPO / "launch" / "ablate.py")
    ablate = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "ablate_cli", ablate)  # its dataclasses look their module up
    spec.loader.exec_module(ablate)
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("GEN_DIST_DATA", data_root)
    monkeypatch.setenv("GEN_DIST_SHARDS", SHARD_CACHE)
    assert ablate.main(["--config", "configs/ablation_mnist.yaml", "--report-only", f"run.dir={tmp_path}",
                        "study.lambdas=[]", "study.variants=[]", "tracking.wandb=false"]) == 0
    report = (tmp_path / "report.md").read_text()
    assert "## Human evaluation" in report and "## Results" in report
    assert "| vae | 4 | 1 | 25.0% [" in report and "| 50.0% [" in report  # 1 error of 4; 1 of 2 fakes judged real
    assert "<h2>Human evaluation</h2>" in (tmp_path / "report.html").read_text()


# --- rounds --------------------------------------------------------------------------------------
def _stub(name: str, classes: int):
    from types import SimpleNamespace

    from gen_dist.config import load_config

    return SimpleNamespace(name=name, num_classes=classes, cfg=load_config(None, ["data.dataset=mnist"], training=False))


def test_rounds_are_balanced_shuffled_and_sides_random():
    from gen_dist.human_eval.tasks import Study

    rf = Study("real-or-fake", [_stub("a", 0), _stub("b", 0)], 5, 0, 256)
    rf.real_indices = {"a": [10, 11, 12, 13, 14], "b": [20, 21, 22, 23, 24]}
    rounds = [rf.draw_round() for _ in range(20)]
    for tasks in rounds:
        assert len(tasks) == 20 and len({t["id"] for t in tasks} | {t["image_a"] for t in tasks}) == 40
        for model, reals in rf.real_indices.items():
            block = sorted((t["source_a"], t["index_a"]) for t in tasks if t["block"] == model)
            assert block == sorted([(model, i) for i in range(5)] + [("real", j) for j in reals])
    assert len({tuple(t["source_a"] for t in tasks) for tasks in rounds}) > 1  # shuffled anew per rater
    pw = Study("pairwise", [_stub("a", 0), _stub("b", 0), _stub("c", 0)], 4, 0, 256)
    tasks = [t for _ in range(10) for t in pw.draw_round()]
    assert len(tasks) == 10 * 3 * 4 and all(t["index_a"] == t["index_b"] for t in tasks)
    lefts = {(t["block"], t["source_a"]) for t in tasks}
    assert lefts == {("a|b", "a"), ("a|b", "b"), ("a|c", "a"), ("a|c", "c"), ("b|c", "b"), ("b|c", "c")}


def test_pairwise_question_names_the_class_of_conditional_models():
    from gen_dist.human_eval.tasks import Study

    conditional = Study("pairwise", [_stub("a", 10), _stub("b", 10)], 4, 0, 256)
    conditional.classes = [f"{i} - digit" for i in range(10)]
    assert conditional.question(13) == "Which looks more like a real MNIST image of class \u201c3 - digit\u201d?"
    plain = Study("pairwise", [_stub("a", 0), _stub("b", 10)], 4, 0, 256)
    plain.classes = conditional.classes
    assert plain.question(13) == "Which looks more like a real MNIST image?"


def test_database_of_another_setup_exits_2(runs, tmp_path, capsys):
    database = tmp_path / "other.sqlite"
    db.init(database)
    conn = db.connect(database)
    db.set_meta_default(conn, "study:real-or-fake", json.dumps({"models": ["someone_else"]}))
    conn.close()
    assert rate_cli.main(["--checkpoint", _final(runs, "vae"), "--db", str(database)]) == 2
    err = capsys.readouterr().err.strip()
    assert "holds real-or-fake rounds of another setup" in err and "\n" not in err
