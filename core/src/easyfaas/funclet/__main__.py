"""``python -m easyfaas.funclet --profile FILE``: run the funclet process."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

# Before grpc loads: the engine forks runners and children; grpc's fork handlers are not wanted.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from easyfaas._log import setup_logging
from easyfaas.errors import ConfigurationError, EasyFaaSError
from easyfaas.funclet.server import run_funclet
from easyfaas.profile import load_profile


def main() -> None:
    parser = argparse.ArgumentParser(prog="easyfaas-funclet")
    parser.add_argument("--profile", default=None)
    args = parser.parse_args()
    setup_logging("funclet")
    try:
        profile = load_profile(args.profile)
        asyncio.run(run_funclet(profile))
    except ConfigurationError as exc:
        print(f"funclet: {exc}", file=sys.stderr)
        sys.exit(78)  # EX_CONFIG: the supervisor does not restart a misconfigured process
    except EasyFaaSError as exc:
        print(f"funclet: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
