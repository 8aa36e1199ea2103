"""``python -m deqir.train CONFIG [--resume] [--device D] [--override K=V ...]``, for ``torchrun``.

Example:
    $ torchrun --nproc_per_node=2 -m deqir.train configs/denoiser_tiny.yaml --device cpu
"""

from __future__ import annotations

import argparse
import os


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments and call :func:`deqir.train.train_from_config`."""
    from deqir.errors import DeqirError
    from deqir.train.trainer import train_from_config

    parser = argparse.ArgumentParser(prog="python -m deqir.train", description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--override", "-o", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--run-dir", default=None)
    args = parser.parse_args(argv)
    try:
        run = train_from_config(
            args.config, resume=args.resume, device=args.device, overrides=args.override, run_dir=args.run_dir
        )
    except DeqirError as err:
        raise SystemExit(f"error: {err}") from None
    if os.environ.get("RANK", "0") == "0":
        print(run)


if __name__ == "__main__":
    main()
