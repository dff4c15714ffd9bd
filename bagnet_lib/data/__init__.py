"""The data (notebook 01): find, download or synthesise the flowers, audit them, split them, decode them.

`folder` finds a dataset and lists its images, `download` fetches the Kaggle/TensorFlow flowers, `synthetic`
makes the embedded stand-in used when there is no dataset and no internet, `audit` finds unreadable files,
duplicates and label conflicts, `split` writes the 70/20/10 split (or reads the paper's manifest), `images`
and `tensors` decode images once into uint8 stacks and build the training batches; `imagenet` reads an ImageNet
validation folder batch by batch (notebook 06) and `fake_imagenet` writes a small fake one. Imports nothing of
the project but `errors` and `io`.
"""
