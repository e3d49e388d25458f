"""``calibscope``: serve the dashboard (the default), from the command line."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from ui import imatrix_cli


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="calibscope",
        description="Calibration data workbench for post-training quantization of language models. "
        "With no command it serves the dashboard.",
    )
    parser.add_argument("--host", default=os.environ.get("CALIBSCOPE_HOST", "127.0.0.1"),
                        help="address to listen on (0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("CALIBSCOPE_PORT", "7860")), help="port to listen on")
    parser.add_argument("--share", action="store_true", help="also open a public Gradio share link")
    parser.add_argument(
        "--shared-space", action="store_true", default=os.environ.get("CALIBSCOPE_SHARED", "") == "1",
        help="shared-Space mode for many visitors: capped upload size, no local model folders (env CALIBSCOPE_SHARED=1)",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = commands.add_parser("run", help="headless: build, collect and write every artifact and an HTML report from a config")
    run.add_argument("config", help="a .toml or .json file with [model], [corpus], [sampling], optional [stats], [hessians], "
                     "[imatrix], [export] and output")
    imatrix_cli.add_commands(commands)
    return parser


def run_config(path: str) -> int:
    """`calibscope run CONFIG`: 0 on success; 2 with a one-line message on bad input."""
    from tqdm import tqdm

    from engine.errors import CalibscopeError
    from engine.pipeline import load_config, run
    from engine.runner import distributed

    try:
        rank, _ = distributed.init_from_environment()  # under torchrun: one rank of a data-parallel run
        config = load_config(path)
        with tqdm(total=100, unit="%", bar_format="{l_bar}{bar}| {postfix}", disable=rank > 0) as bar:
            def progress(fraction: float, message: str) -> None:
                bar.n = round(100 * fraction)
                bar.set_postfix_str(message[:80])

            written = run(config, progress, log=lambda line: bar.write(line, file=sys.stderr) if rank == 0 else None)
    except CalibscopeError as error:
        print(f"calibscope: {error}", file=sys.stderr)
        return 2
    for name, target in written.items():
        print(f"{name:12s} {target}")
    return 0


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "run":
        logging.basicConfig(level=logging.WARNING)
        sys.exit(run_config(args.config))
    if args.command == "imatrix":
        logging.basicConfig(level=logging.WARNING)
        sys.exit(imatrix_cli.run(args))
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per HTTP request drowns the log
    from ui.app import launch  # imported late: `calibscope --help` stays instant

    launch(host=args.host, port=args.port, share=args.share, shared_space=args.shared_space)


if __name__ == "__main__":
    main()
