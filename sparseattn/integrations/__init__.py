"""Integrations of sparse attention strategies into model libraries.

``sparseattn.integrations.diffusers`` patches diffusers video transformers (Wan 2.1, HunyuanVideo); it imports
diffusers, an optional extra (``pip install "sparseattn[diffusers]"``), so nothing here is imported eagerly: use
``sparseattn.apply`` / ``sparseattn.remove``, which import it on first use.
"""
