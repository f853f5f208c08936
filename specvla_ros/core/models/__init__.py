"""Models behind the ``VLAModel`` interface: the interface and loading, checkpoint files, the
tiny VLA and its LLaMA layers, the EAGLE draft head, the OpenVLA adapter with its vision towers,
tokenizers, proprioception features and frame resizing."""
