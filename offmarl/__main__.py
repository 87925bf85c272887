import sys

from offmarl.cli import main

sys.exit(main())
