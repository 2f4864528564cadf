"""tuici benchmarks: `python -m bench` (see bench/__main__.py and README)."""
