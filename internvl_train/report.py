"""`python -m internvl_train.report RUN_DIR`: loss curves and evaluation metrics of a run as PNGs
(implementation: internvl_train.eval.report)."""
import sys

from internvl_train.eval.report import main

if __name__ == "__main__":
    sys.exit(main())
