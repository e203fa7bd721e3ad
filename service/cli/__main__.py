"""`python -m service.cli`: the same as `codat-webhooks`."""

import sys

from service.cli import main

sys.exit(main())
