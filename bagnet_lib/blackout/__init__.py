"""Blackout (notebook 04): drop patches, channels or pixels and see what a decision needs.

`masks` and `aggregate` are the mechanism (which patch logits to keep, how to pool them); `sweep` caches a
split's patch logits once and evaluates any number of masks on the cache with `stream`'s engine (which also
runs batch by batch, for datasets whose patch logits do not fit in memory); `channels` is what the paper's code
did (feature channels zeroed), `pixels` removes image tiles before the network; `sparse` computes only the
kept windows and `frontier` prices every way of spending less; `study` is the course's set of experiments
over a run directory, `imagenet` the same readings as one streaming pass over an image folder (notebook 06). Imports `nets` and `data`, never the figures, the write-up or the course.
"""
