"""``python -m densemtl`` (and ``torchrun -m densemtl``): the command line."""

import sys

from densemtl.cli.main import main

sys.exit(main())
