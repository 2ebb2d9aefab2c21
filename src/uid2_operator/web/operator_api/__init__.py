"""The public operator API (``/v2/*``, ``/v3/*``, ``/ops/*``)."""
