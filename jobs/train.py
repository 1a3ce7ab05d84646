"""spark-submit entry point of the train stage: `spark-submit jobs/train.py --run-date YYYY-MM-DD`."""
import sys

from coldstart.jobs import main

if __name__ == "__main__":
    sys.exit(main("train"))
