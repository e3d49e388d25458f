"""``calibscope``: serve the dashboard (the default), from the command line."""
from __future__ import annotations

import argparse
import logging
import os


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="calibscope",
        description="Calibration data workbench for post-training quantization of language models. "
        "With no command it serves the dashboard.",
    )
    parser.add_argument("--host", default=os.environ.get("CALIBSCOPE_HOST", "127.0.0.1"), help="address to listen on (0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("CALIBSCOPE_PORT", "7860")), help="port to listen on")
    parser.add_argument("--share", action="store_true", help="also open a public Gradio share link")
    parser.add_argument(
        "--shared-space", action="store_true", default=os.environ.get("CALIBSCOPE_SHARED", "") == "1",
        help="shared-Space mode for many visitors: capped upload size, no local model folders (env CALIBSCOPE_SHARED=1)",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per HTTP request drowns the log
    from ui.app import launch  # imported late: `calibscope --help` stays instant

    launch(host=args.host, port=args.port, share=args.share, shared_space=args.shared_space)


if __name__ == "__main__":
    main()
