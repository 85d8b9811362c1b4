import sys

from whetstone.cli import main

sys.exit(main())
