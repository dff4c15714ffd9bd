"""Figures (every notebook): plots, the figure registry, patch evidence and the blackout explorer widget.

`plots` draws (matplotlib and seaborn, PNG through one saver), `registry` names every figure a run makes and its
caption, `evidence` draws the patch evidence and receptive fields, `widgets` is notebook 04's interactive
explorer. Figures of a whole run directory are `bagnet_lib.course.views`.
"""
