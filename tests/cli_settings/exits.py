"""A broken settings module: it exits while being imported (the CLI must say so in one line)."""

import sys

sys.exit("this settings module gives up")
