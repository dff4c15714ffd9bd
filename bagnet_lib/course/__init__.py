"""The headless course: the steps the notebooks call, and the runner that executes the notebooks.

`pipeline` opens a run directory and trains (notebooks 01–03), `views` draws each notebook's figures of a run,
`record` keeps the values a notebook records for the tests, `runner` executes notebooks 01–05 with papermill
(`make reproduce`), the seed study (`make seeds`) and publishing, `tuning` the recorded tuning runs, `imagenet` the ImageNet
study (notebook 06, `python -m bagnet_lib imagenet`). The top
layer: it may import everything below it.
"""
