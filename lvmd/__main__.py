import sys

from lvmd.cli import main

sys.exit(main())
