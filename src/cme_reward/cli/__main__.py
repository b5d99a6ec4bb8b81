"""`python -m cme_reward.cli` runs `cme-reward`."""

from .main import main

raise SystemExit(main())
