"""``python -m affectfpn.cli`` (the same as ``affectfpn`` and ``python -m affectfpn``)."""

from affectfpn.cli.app import main

if __name__ == "__main__":
    raise SystemExit(main())
