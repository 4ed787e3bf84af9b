"""Reproducible AlexNet on Fashion-MNIST: the shared package behind the DVC stages."""
