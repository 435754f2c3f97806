"""Plumbing every layer uses: argument checks, atomic output sets, paths, randomness, exact sums, progress."""
