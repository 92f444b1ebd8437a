"""``tunedlens serve``: a local web explorer of lens readouts (extra ``serve``)."""
