import sys

from lvmd.cli.main import main

sys.exit(main())
