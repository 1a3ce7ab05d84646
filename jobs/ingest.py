"""spark-submit entry point of the ingest stage: `spark-submit jobs/ingest.py --run-date YYYY-MM-DD`."""
import sys

from coldstart.jobs import main

if __name__ == "__main__":
    sys.exit(main("ingest"))
