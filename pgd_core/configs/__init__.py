"""A RunSpec as mmdet / mmengine config dicts, built in code. Light: no torch."""
