import sys

from imem_cli.main import main

sys.exit(main())
