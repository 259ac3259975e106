"""``python -m cluctl``: the command line, as the ``cluctl`` script."""

from cluctl.cli.main import main

if __name__ == "__main__":  # pragma: no cover - exercised through a subprocess in the tests
    main()
