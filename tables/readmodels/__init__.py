"""Pure read-model functions: how each event changes a read model's document.

No I/O here: the projections in ``agents/`` call these with the current document
read from a transaction and write back what they return.
"""
