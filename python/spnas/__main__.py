"""`python -m spnas ...` is the `spnas` command."""

import sys

from .cli import main

sys.exit(main())
