import os
import sys

# bench_<op>.py files import the shared helpers as `common`.
sys.path.insert(0, os.path.dirname(__file__))
