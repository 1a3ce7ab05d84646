"""spark-submit entry point of the score stage: `spark-submit jobs/score.py --run-date YYYY-MM-DD`."""
import sys

from coldstart.jobs import main

if __name__ == "__main__":
    sys.exit(main("score"))
