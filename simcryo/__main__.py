import sys

from simcryo.cli import main

sys.exit(main())
