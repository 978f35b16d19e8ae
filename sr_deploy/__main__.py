import sys

from sr_deploy.cli import main

sys.exit(main())
