"""Imported first by every bench script: take bench/ off sys.path, put the repository root on it.

Python puts a script's folder first on sys.path, and bench/tokenize.py would then shadow the
standard library's ``tokenize`` (imported by linecache, hence by torch and logging) for every
script here. Import this before anything else: ``import _isolate  # noqa: F401``.
"""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))
