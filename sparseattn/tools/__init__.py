"""Scripts around the framework that are not needed at runtime (their heavy dependencies are optional extras).

``python -m sparseattn.tools.capture_vit`` builds the shipped default workload from a real video and a pretrained
vision transformer; it doubles as a worked example of capturing q, k, v from any PyTorch model with forward hooks.
"""
