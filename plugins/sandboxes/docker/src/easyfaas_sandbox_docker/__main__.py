"""Import the base image by hand: ``python -m easyfaas_sandbox_docker [--url URL] [--force]``.

The driver does the same on first use; this is for building custom images before an engine has run.
"""

from __future__ import annotations

import argparse
import logging
import sys

from easyfaas_sandbox_docker._image import BASE_IMAGE, SKELETON_LABEL, host_skeleton, import_base_image
from easyfaas_sandbox_docker.driver import _default_url, _unreachable


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m easyfaas_sandbox_docker", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--url", default=_default_url(), help="the Docker engine (default: %(default)s)")
    parser.add_argument("--uid", type=int, default=65534, help="uid named 'sandbox' in the image's /etc/passwd")
    parser.add_argument("--force", action="store_true", help="import again even if the image is up to date")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import docker

    try:
        api = docker.APIClient(base_url=args.url, version="auto", timeout=60)
    except docker.errors.DockerException as exc:
        print(_unreachable(args.url, exc), file=sys.stderr)
        return 1
    skeleton = host_skeleton(args.uid, args.uid)
    try:
        labels = (api.inspect_image(BASE_IMAGE).get("Config") or {}).get("Labels") or {}
    except docker.errors.ImageNotFound:
        labels = {}
    if labels.get(SKELETON_LABEL) == skeleton.digest and not args.force:
        print(f"{BASE_IMAGE} is up to date (skeleton {skeleton.digest})")
        return 0
    print(import_base_image(api, skeleton))
    return 0


if __name__ == "__main__":
    sys.exit(main())
