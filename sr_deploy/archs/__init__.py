"""Architectures as plug-ins: the protocol (``base``, ``spec``), the registry and one module per architecture."""
