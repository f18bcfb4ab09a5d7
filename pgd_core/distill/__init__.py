"""PGD itself: key predictive regions, losses, teacher decoding, the distiller, KD balance.

Importing the submodules needs torch (and mmdet for the distiller); this package
file imports nothing.
"""
