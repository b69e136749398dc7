import sys

from omatic.cli import main

sys.exit(main())
