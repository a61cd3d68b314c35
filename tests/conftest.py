import os
import sys

# tests import their helper models as a plain module
sys.path.insert(0, os.path.dirname(__file__))
