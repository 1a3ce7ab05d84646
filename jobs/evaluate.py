"""spark-submit entry point of the evaluate stage: `spark-submit jobs/evaluate.py --run-date YYYY-MM-DD`."""
import sys

from coldstart.jobs import main

if __name__ == "__main__":
    sys.exit(main("evaluate"))
