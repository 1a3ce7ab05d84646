"""spark-submit entry point of the embed stage: `spark-submit jobs/embed.py --run-date YYYY-MM-DD`."""
import sys

from coldstart.jobs import main

if __name__ == "__main__":
    sys.exit(main("embed"))
