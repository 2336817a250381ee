"""`python -m llm_audit` is the `llm-audit` command."""

import sys

from llm_audit.cli import main

sys.exit(main())
