"""A deliberately broken handler module: it exits while being imported."""

import sys

sys.exit(3)
