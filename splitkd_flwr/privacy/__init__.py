"""What an honest-but-curious edge server can learn from a split round, measured.

The server holds the teacher, the global student and everything it receives: the
data-plane frames and the Flower messages of a round. :mod:`.capture` says what a round
is made of, :mod:`.inversion` and :mod:`.search` hold the attacks on activations,
:mod:`.leaks` those on gradients and weight uploads, :mod:`.audit` runs them all on a
captured round. No Flower here: the capture is filled by ``split_kd`` (see
``splitkd audit``).
"""
