"""``python -m affectfpn``: the command line (see :mod:`affectfpn.cli`)."""

from affectfpn.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
