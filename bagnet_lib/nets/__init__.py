"""The networks and their training (notebooks 02 and 03).

`models` (ResNet-50 and BagNet-9/17/33 as one patch-logit ResNet), `weights` (the ImageNet checkpoints,
hash-checked), `profiles` (the settings of a run: smoke, cpu, gpu, paper), `precision` (bf16 where fast, fp32 with TF32 off), `train` (the resumable training
loop), `distributed` (torchrun: ranks, sharded evaluation, rank 0 writes), `metrics` (scores and their
intervals), `gradcam`, and `run` (an opened run directory, what the later layers read). Imports `data`, never the blackout study, the figures, the write-up or the course.
"""
