import sys

from bagnet_lib.cli import main

sys.exit(main())
