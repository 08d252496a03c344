"""Human evaluation in the browser (launch/rate.py): real-or-fake (HYPE-infinity) and pairwise (2AFC)
ratings of generated images, stored in SQLite, scored with bootstrap intervals. See docs/human_eval.md.

    sources.py  the only imports from the rest of gen_dist (checkpoints, samples, test images)
    tasks.py    image pools and each rater's round
    db.py       human_eval.sqlite
    app.py      the FastAPI server; static/ the page
    scores.py   error rates, win rates, Bradley-Terry, bootstrap intervals
    report.py   markdown/HTML tables
"""
