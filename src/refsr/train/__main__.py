"""``python -m refsr.train CONFIG.yaml`` / ``torchrun --nproc_per_node=N -m refsr.train CONFIG.yaml``."""

from __future__ import annotations

from refsr.train.cli import main

raise SystemExit(main())
