"""``python -m easyfaas.controller --profile FILE``: run the controller process."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

# Before grpc loads: the engine forks runners and children; grpc's fork handlers are not wanted.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from easyfaas._log import setup_logging
from easyfaas.controller.server import run_controller
from easyfaas.errors import ConfigurationError, EasyFaaSError
from easyfaas.profile import load_profile


def main() -> None:
    parser = argparse.ArgumentParser(prog="easyfaas-controller")
    parser.add_argument("--profile", default=None)
    args = parser.parse_args()
    setup_logging("controller")
    try:
        profile = load_profile(args.profile)
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is optional off Linux/macOS
            asyncio.run(run_controller(profile))
        else:
            uvloop.run(run_controller(profile))
    except ConfigurationError as exc:
        print(f"controller: {exc}", file=sys.stderr)
        sys.exit(78)  # EX_CONFIG: the supervisor does not restart a misconfigured process
    except EasyFaaSError as exc:
        print(f"controller: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
