"""Human evaluation of trained generators in the browser: real-or-fake (HYPE-infinity) or pairwise.

    # real-or-fake: each rater sees 50 samples of the model and 50 real test images, shuffled
    python launch/rate.py --checkpoint runs/dcgan32_mnist/checkpoints/final.pt
    # pairwise (2AFC) between models, named NAME=PATH (default: the run folder's name)
    python launch/rate.py --protocol pairwise --checkpoint vae=runs/study/vae/checkpoints/final.pt \
        --checkpoint gan=runs/study/gan/checkpoints/final.pt --images 30
    # a lab's raters on the LAN: the printed URL carries an access token
    python launch/rate.py --checkpoint runs/x/checkpoints/final.pt --host 0.0.0.0 --port 8765
    # scores (printed, and written to human_eval.md beside the database)
    python launch/rate.py --report runs/x/human_eval.sqlite

Images are drawn as the evaluation draws them: sample i from latent i of --seed (default: the run's
seed, whose samples FID was computed on). Judgements go to human_eval.sqlite in the run folder (the
folder holding several runs' folders, for several checkpoints) or --db; a restarted server continues
every rater's round where it stopped. See docs/human_eval.md. Exit status: 0 done, 2 bad input.
"""

from __future__ import annotations

import argparse
import errno
import os
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from gen_dist.errors import UserError  # noqa: E402

PROTOCOLS = ("real-or-fake", "pairwise")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--checkpoint", action="append", default=[], metavar="[NAME=]PATH",
                   help="a model to rate (repeat for several); NAME defaults to its run folder's name")
    p.add_argument("--protocol", default="real-or-fake", help="real-or-fake (default) or pairwise")
    p.add_argument("--images", type=int, default=50,
                   help="per rater: samples per model (real-or-fake, plus as many real images), or comparisons "
                        "per pair of models (pairwise)")
    p.add_argument("--seed", type=int, help="latent seed: sample i from (seed, i); default: the run's seed")
    p.add_argument("--display", type=int, default=256, help="shown size in pixels (nearest-neighbour upscaling)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind; beyond loopback a token is required")
    p.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    p.add_argument("--db", help="judgements database (default: human_eval.sqlite in the run folder)")
    p.add_argument("--report", metavar="DB", help="print the scores of a database and write them as markdown")
    p.add_argument("--out", help="--report: the markdown file (default: human_eval.md beside the database)")
    return p.parse_args(argv)


def check_args(args) -> None:
    if args.report is not None:
        if not Path(args.report).is_file():
            raise UserError(f"--report '{args.report}' does not exist: pass a human_eval.sqlite launch/rate.py wrote")
        return
    if args.protocol not in PROTOCOLS:
        raise UserError(f"unknown --protocol '{args.protocol}': use real-or-fake or pairwise")
    if not args.checkpoint:
        raise UserError("no --checkpoint: give the checkpoint(s) to rate, e.g. --checkpoint runs/x/checkpoints/final.pt")
    if args.protocol == "pairwise" and len(args.checkpoint) < 2:
        raise UserError("--protocol pairwise compares models: give at least two --checkpoint")
    if args.images < 1:
        raise UserError(f"--images {args.images}: ask for at least 1")
    if not 16 <= args.display <= 2048:
        raise UserError(f"--display {args.display}: give a size between 16 and 2048 pixels")
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port} is not a port number (0-65535; 0 = a free one)")


def split_spec(spec: str) -> tuple[str | None, str]:
    name, sep, path = spec.partition("=")
    if sep and name and "/" not in name and os.sep not in name:
        return name, path
    return None, spec


def load_models(specs: list[str]):
    from gen_dist.human_eval.sources import load_model, run_dir_of

    models = []
    for spec in specs:
        name, path = split_spec(spec)
        models.append(load_model(name or run_dir_of(path).name, path))
    return models


def default_db(specs: list[str]) -> Path:
    from gen_dist.human_eval.sources import run_dir_of

    folders = [str(run_dir_of(split_spec(s)[1])) for s in specs]
    return Path(os.path.commonpath(folders)) / "human_eval.sqlite"


def bind(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise UserError(f"--host '{host}' is not an address of this machine ({e.strerror}): use 127.0.0.1 or 0.0.0.0")
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} on {host} is in use: pick another --port, or omit --port for a free one")
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror}): pick another --host or --port")
    sock.listen(128)
    return sock


def report(args) -> int:
    from gen_dist.human_eval.report import write

    text, out = write(args.report, args.out)
    print(text, flush=True)
    print(f"rate: wrote {out}", flush=True)
    return 0


def serve(args) -> int:
    import secrets

    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as e:
        raise UserError(f"the rating server needs FastAPI and uvicorn ({e}): pip install -e '.[rate]'") from None

    sock = bind(args.host, args.port)  # first: a port in use is found before torch is imported
    try:
        from gen_dist.human_eval import db
        from gen_dist.human_eval.app import create_app
        from gen_dist.human_eval.tasks import Study, check_models

        models = load_models(args.checkpoint)
        check_models(args.protocol, models)
        database = Path(args.db) if args.db else default_db(args.checkpoint)
        database.parent.mkdir(parents=True, exist_ok=True)
        seed = args.seed if args.seed is not None else models[0].cfg.seed
        study = Study(args.protocol, models, args.images, seed, args.display)
        db.init(database)
        conn = db.connect(database)
        try:
            stored = db.set_meta_default(conn, f"study:{args.protocol}", study.describe())
            if stored != study.describe():
                raise UserError(f"{database} holds {args.protocol} rounds of another setup ({stored}): rerun with those "
                                "models and options, or pass another --db")
            token = None if args.host in LOOPBACK else db.set_meta_default(conn, "access_token", secrets.token_urlsafe(24))
        finally:
            conn.close()
        study.render()
    except BaseException:
        sock.close()
        raise
    app = create_app(study, database, token)
    port = sock.getsockname()[1]
    shown = socket.gethostname() if args.host in ("0.0.0.0", "::") else args.host
    shown = f"[{shown}]" if ":" in shown else shown
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    print(f"rate: {args.protocol} over {', '.join(m.name for m in models)}: {study_size_text(study)}; "
          f"judgements go to {database}", flush=True)
    print(f"rate: open {url}", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    server.run(sockets=[sock])
    return 0


def study_size_text(study) -> str:
    from gen_dist.human_eval.app import study_size

    return f"{study_size(study)} tasks per rater"


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        check_args(args)
        return report(args) if args.report is not None else serve(args)
    except UserError as e:
        print(f"gen_dist: error: {e}", file=sys.stderr, flush=True)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
