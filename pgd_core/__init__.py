"""pgd_core: Prediction-Guided Distillation on mmdet 3.3 (pure ML library)."""
