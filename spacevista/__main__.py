import sys

from spacevista.cli import main

sys.exit(main())
