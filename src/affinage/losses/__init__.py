"""Loss functions: pure functions of tensors. This package imports torch only."""
