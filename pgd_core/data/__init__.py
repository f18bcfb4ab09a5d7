"""Data sets: manifests, COCO and CrowdHuman readers, validation, synthetic generators.

Light: no torch, mmdet or mmengine (the API imports these modules).
"""
