"""``python -m weightgeo …`` (and ``torchrun -m weightgeo …``): the command line."""

from weightgeo.cli import main

if __name__ == "__main__":
    main()
