import sys

from colorize.cli import main

sys.exit(main())
