"""Logging setup shared by the engine's processes: one line per record, process name first."""

from __future__ import annotations

import logging
import os


def setup_logging(process: str) -> None:
    level = os.environ.get("EASYFAAS_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format=f"%(asctime)s {process:<10} %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
