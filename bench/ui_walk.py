"""A newcomer's walk through every tab of the real dashboard, timed from click to result.

Launches the app with the builtin Gemma 3 270M and the defaults (mixed corpus, the CPU defaults of
each tab; the comparison as small as it gets: 2 strategies, 1 seed, 4 samples), drives it in headless
Chromium, and times each step from the click to its result. Saves a screenshot per tab (into
--screenshots, e.g. assets/screenshots for the README). Goal: the slowest step <= 60 s, AWQ aside:
its search runs each block's attention and MLP 20 times over the whole set (minutes on a 2-core CPU
for the default 32 samples, whatever the code around it does), so its time is reported on its own.
Usage: python bench/ui_walk.py [--quick] [--screenshots DIR] [--steps NAME,...]   (--quick: the tiny
model; --steps: only those steps, e.g. "load,build,hessians,quantize (mixed)" to remake one tab's
screenshot; a partial walk is not a result and writes none)
"""
from __future__ import annotations

import _isolate  # noqa: F401  (first: see bench/_isolate.py)

# isort: split
import argparse
from pathlib import Path

from bench._common import report
from tests.browser import chromium_page, served_app
from tests.walk import Walk, steps
from ui.context import AppContext

GOAL_S = 60.0
UNBOUNDED = ("quantize (AWQ)",)  # arithmetic-bound: 20 runs of every block's attention and MLP over the set


def result_line(status: str, done: str) -> str:
    """The line of the visible statuses that says the step is done (a tab can show several statuses:
    Export's downloads above its quantized model), else the first line of words (Gradio's elapsed-time
    badge is a line of its own)."""
    lines = [line for line in status.splitlines() if len(line.split()) > 2]
    return next((line for line in lines if done in line), lines[0] if lines else "")[:160]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the tiny model: checks the walk in a minute")
    parser.add_argument("--screenshots", type=Path, default=None, help="save one screenshot per tab here")
    parser.add_argument("--steps", default="", help="only these steps (comma-separated names), no result written")
    args = parser.parse_args()
    model = "tiny-random-llama" if args.quick else "builtin:gemma-3-270m"
    if args.screenshots:
        args.screenshots.mkdir(parents=True, exist_ok=True)
    with served_app(context=AppContext(default_model=model)) as url, chromium_page(1400, 1000) as page:
        page.goto(url)
        walk = Walk(page, timeout_ms=1_800_000)
        # the tiny model's widths (32, 37) take no group of 128: its first run, written at the end, is per channel
        walk_steps = steps(scheme_first="W8A8 static (min/max)", rotated_scheme="W4 g128 RTN") if args.quick else steps()
        if args.steps:
            wanted = {name.strip() for name in args.steps.split(",")}
            walk_steps = [step for step in walk_steps if step.name in wanted]
        statuses = {step.name: result_line(walk.run(step, args.screenshots), step.done) for step in walk_steps}
    if args.steps:
        print(walk.times, statuses)
        return
    goal_steps = {name: seconds for name, seconds in walk.times.items() if name not in UNBOUNDED}
    slowest = max(goal_steps, key=goal_steps.get)
    report("ui_walk", "slowest_step_seconds", walk.times[slowest], f"<= {GOAL_S:g} ({', '.join(UNBOUNDED)} aside)",
           walk.times[slowest] <= GOAL_S, dtype="auto (the dashboard's default)", device="auto (the dashboard's default)",
           quick=args.quick, model=model, slowest=slowest, seconds=walk.times, statuses=statuses,
           outside_the_goal={name: walk.times[name] for name in UNBOUNDED if name in walk.times})


if __name__ == "__main__":
    main()
